"""validator: verifies every reading on its own and attests per device and window (issue 3).

Built so far: :mod:`validator.verify` (the checks on one signed reading, with reason codes).
"""
