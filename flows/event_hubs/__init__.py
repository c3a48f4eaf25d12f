"""Event hubs: created on time, pre-warmed, reminded, exported and expired automatically.

One module per operation, each a flow and its runbook:

* `create.py` — `create_event_hub`, at start - pre-warm lead time (scheduled by
  `sync_event_schedules`): deploy, pre-warm, schedule the reminders and the expiry;
* `remind.py` — `remind_event_organizers`, at each reminder offset before expiry;
* `extend.py` — `extend_event_hub`: move the end, reschedule;
* `expire.py` — `expire_event_hub`, at end + grace: snapshot, export, `teardown_hub`;
* `reap.py` — `reap_expired_event_hubs` (hourly): expire whatever those runs missed and
  report hubs whose creation is overdue;
* `sync_schedules.py` — `sync_event_schedules`: the scheduled runs follow the fleet;
* `prewarm.py` — the cluster's placeholders, shared by create, expire and reap.

What may be expired is decided by `hubfleet.events`: only `kind: event` hubs past their
end, whatever the input. The scheduled runs and extensions are `tasks/event_schedule.py`'s,
which hub exists `tasks/event_presence.py`'s, and messages `tasks/notify.py`'s. The runs go
through the deployments `hubfleet setup` registers (`deployments/registry.py`), so a worker
on the hubfleet pool runs them at their time.
"""

from flows.event_hubs.create import create_event_hub
from flows.event_hubs.expire import expire_event_hub
from flows.event_hubs.extend import extend_event_hub
from flows.event_hubs.reap import reap_expired_event_hubs
from flows.event_hubs.remind import remind_event_organizers
from flows.event_hubs.sync_schedules import sync_event_schedules

__all__ = [
    "create_event_hub",
    "expire_event_hub",
    "extend_event_hub",
    "reap_expired_event_hubs",
    "remind_event_organizers",
    "sync_event_schedules",
]
