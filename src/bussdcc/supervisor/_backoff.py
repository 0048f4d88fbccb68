"""The respawn backoff: a pure function of the failure streak and the policy, whatever the streak."""

from __future__ import annotations

#: Doublings counted at most: 2.0 ** 1024 raises OverflowError, while 2.0 ** 1023 times any
#: positive float a policy may hold either is exact or saturates at inf, which the maximum caps.
_MAX_DOUBLINGS = 1023


def backoff_delay(streak: int, initial: float, maximum: float, jitter: float = 1.0) -> float:
    """Seconds to wait before respawn number ``streak + 1`` of a worker that failed ``streak`` times in a row.

    The first respawn after a healthy run (``streak`` 0) is immediate; each further one waits
    twice as long as the last, times ``jitter`` (the caller draws it, e.g. 0.75 to 1.25), never
    more than ``maximum``. Any streak is fine: the exponent is capped, so nothing overflows.
    """
    if streak <= 0:
        return 0.0
    doublings = min(streak - 1, _MAX_DOUBLINGS)
    delay = min(maximum, initial * 2.0**doublings)
    return max(0.0, min(maximum, delay * jitter))
