"""validator: verifies every reading on its own, agrees with its peers on one attestation per
device and window, and signs it (issue 3; docs/validator.md, docs/protocol.md sections 6-7).

Pure logic: :mod:`validator.verify` (the checks on one signed reading, with reason codes),
:mod:`validator.agreement` (the agreement messages and rules), :mod:`validator.node` (the whole
validator as a state machine: messages and a clock in, messages out; its parts are
:mod:`validator.intake` (readings in, pending and repair), :mod:`validator.rounds` (the agreement
rounds per window), :mod:`validator.settle` (certificates, certified windows, backups),
:mod:`validator.views` (each window's set and terms under the schedule) and
:mod:`validator.shared`), :mod:`validator.window` (one validator's own view of windows).
I/O: :mod:`validator.app` (the aiomqtt runner),
:mod:`validator.chain` (the chain watcher: validator set and methodology terms from the
contracts, issue 4; imported only with ``[chain]``), :mod:`validator.metrics` (Prometheus and
health), :mod:`validator.cli`.
"""

from validator.node import NodeStats, Outbound, ValidatorNode
from validator.verify import ReadingVerifier, Reason, Verdict

__all__ = ["NodeStats", "Outbound", "ReadingVerifier", "Reason", "ValidatorNode", "Verdict"]
