"""The on-device anomaly model: building it (train), evaluating it on NAB (nab) and its CLI
(cli: the ``senken model`` click group). The runtime lives in ``senken_core.anomaly``."""
