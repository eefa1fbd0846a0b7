"""validator: verifies every reading on its own and attests per device and window (issue 3).

Built so far, pure logic: :mod:`validator.verify` (the checks on one signed reading, with
reason codes) and :mod:`validator.window` (windows to attestations). Next: the quorum protocol
that makes validators agree on each window's readings, and the runner around them.
"""
