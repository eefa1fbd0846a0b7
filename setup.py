"""Build hook for the two optional C extensions; everything else is in pyproject.toml.

``senken_core._batchsign`` signs a batch of readings without holding the GIL (see its source).
``senken_core._edverify`` verifies Ed25519 signatures with per-key tables (see its source).
Both are optional: where no C compiler or Python headers are installed, the build skips them with
a warning; the agent then signs one reading per call and the validator verifies with PyNaCl
(slower, same signatures and verdicts).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "senken_core._batchsign",
            sources=["senken_core/_batchsign.c"],
            optional=True,
            # no fused multiply-add: the model's post-processing must round as Python's floats do
            extra_compile_args=["-O2", "-ffp-contract=off", "-Wall", "-Wextra",
                                "-Wno-unused-parameter"],
            libraries=["m"],
        ),
        Extension(
            "senken_core._edverify",
            sources=["senken_core/_edverify.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
