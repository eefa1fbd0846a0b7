"""Build hook for the one optional C extension; everything else is in pyproject.toml.

``senken_core._batchsign`` signs a batch of readings without holding the GIL (see its source).
It is optional: where no C compiler or Python headers are installed, the build skips it with a
warning and the agent signs one reading per call through PyNaCl (slower, same signatures).
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
        )
    ]
)
