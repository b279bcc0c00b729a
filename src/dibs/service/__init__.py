"""The service: `Coordinator`, the one object every face calls, and what it stands on.

* `coordinator`: the use cases (register, claim, renew, release, evict, status, log, doctor,
  and `transact` plus read methods for the integrations);
* `identity`: who is acting, and how dibs knows (session tokens, the operator override);
* `checks`: input checks every face runs before touching the store;
* `views`: leases and agents as faces show them;
* `opening`: which store a URL names.
"""

from dibs.service.coordinator import Coordinator

__all__ = ["Coordinator"]
