"""Where each build goes: the node where it will be ready soonest, usually the warmest.

Pure code with an injected clock. The coordinator's build queue and the trace-driven simulator in
``bench/simulate.py`` both drive this module through the same calls:

* ``plan(queue, nodes)`` — given the waiting requests and the nodes, which requests go where now,
  which keep waiting (and why), and which entries to prewarm on which nodes;
* ``started(request, node)`` / ``finished(request_id, ...)`` — what happened, so the scheduler can
  estimate how long the running builds still take and learn fetch, extraction and build rates;
* ``node_joined`` / ``node_lost`` — to replicate hot keys onto a new node or away from a lost one.

For each request and each candidate node it estimates the **time until the build can start doing
useful work**: the wait for a slot on that node, plus the bytes the node must fetch divided by the
fetch bandwidth, plus the time to extract them. Warmth comes from what agents *report* holding, as far
as the coordinator corroborates it (``placement.claims``: the inventory holds nothing else; reports from
a node not heard from within ``warmth_ttl_s`` do not count), and partial warmth
counts: a node holding an older entry under a restore prefix fetches only the difference, estimated
from the entries' content sketches when both are known.

Then:

* **Bounded load.** No node takes more than ⌈c·(L+1)/N⌉ builds at once (L running across the N
  schedulable nodes), so a popular key cannot pile every build on one node.
* **Delay rule.** A request waits for a busy warm node only when that node's expected wait plus its
  restore beats the best free node's restore. Each waiting request reserves the node's next free
  slot, so a second request for the same busy node sees a longer wait and goes elsewhere instead of
  queueing behind it while capable nodes sit idle.
* **Stable overflow.** Ties go to the rendezvous-hash order of the key, so the spill-over for one
  key lands on the same next nodes, which then warm up.
* **Hot keys replicate.** When requests queue for a key whose warm nodes are all busy, the key is
  prewarmed onto its next rendezvous node; also after a node holding hot keys is lost, and onto a
  new node that ranks high for hot keys.
* **Costly keys keep a free holder.** A key whose cold restore is long (``costly_restore_s``) and
  that is in demand keeps at least one holder that is not at the load bound (two when its builds
  overlap often): when placing one of its builds leaves fewer, it is prewarmed onto the node holding
  its closest older entry (only the difference is fetched), else onto its next rendezvous node. Its
  replicas are touched as it is used, so the nodes' LRU eviction keeps them. And a build that must
  start cold goes to the free node whose taking costs such keys least (of ``cold_candidates``): not
  the last free holder of a costly key when another free node will do. Only taking a node's last slot
  under the bound costs anything (below it the node stays a free holder), and of equally good cold
  nodes the least loaded goes first, so the weighing does not pile cold builds onto the nodes that hold
  nothing worth keeping (new ones, typically).
* **Ties.** Free candidates whose estimated ready times fall in the same ``ready_tie_s`` slice count as
  equally ready. Between them, the one whose taking costs costly keys least goes first (for warm and
  partial nodes too: a build never leaves a node where it is clearly ready sooner for another key's sake),
  then the least loaded, then the least *hot* (its mean load since it joined over the fleet's mean per
  node in that time — so that a node that joined at the busy hours and holds a hot workspace does not run
  at its bound all afternoon while the rest of the fleet does not), then the key's rendezvous order.
* **Superseded entries go.** When a build finishes on a node, the node is asked to evict its older
  entries under the build's restore prefixes: a restore takes the newest, and on small disks the older
  ones would push other workspaces' only copies out of the LRU order.
* **Fairness.** Requests age (one priority level per ``aging_s`` waited); within a level, the tenant
  with the fewest running builds goes first, and while others wait no tenant holds more than
  ``tenant_share`` of the slots.

Every decision carries its reason and the estimated ready time of the top candidates.

Where each part lives:

* ``settings`` — ``SchedulerSettings``;
* ``planner`` — the ``Scheduler`` (events and ``plan``) and the ``Plan`` it returns;
* ``stages`` — one decision as a chain of named stages: admit, warm, partial and cold candidates, rank,
  explain;
* ``fleet`` — what one pass sees of the fleet (load, bound, when slots free);
* ``estimates`` — learned rates, restore times, what a partial restore fetches (``similarity``);
* ``rendezvous`` — each key's rendezvous order over the nodes;
* ``costly`` — what taking a node costs the costly keys' last free holders;
* ``demand`` — hot keys, arrival rates, recently used costly keys;
* ``prewarm`` — prewarms asked (cooldown, hot keys, costly keys' free holders);
* ``fairness`` — aging and tenant shares;
* ``heat`` — each node's load over the fleet's since it joined;
* ``recent`` — the bounded maps all of the above remember in.
"""

from stoker.coordinator.placement.scheduler.estimates import Estimator, similarity
from stoker.coordinator.placement.scheduler.planner import Plan, Scheduler
from stoker.coordinator.placement.scheduler.settings import SchedulerSettings
from stoker.coordinator.placement.scheduler.stages import Candidate

__all__ = ["Candidate", "Estimator", "Plan", "Scheduler", "SchedulerSettings", "similarity"]
