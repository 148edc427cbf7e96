"""The Kubernetes plumbing of vmgroup-operator, shared by the controller and the webhook.

- `watch`: list + watch with bookmarks, 410 Gone relist, silence timeout, resync;
- `queue`: the controller's work queue (dedup, one worker per key, per-key backoff);
- `leader`: Lease leader election;
- `events`: recording core/v1 Events;
- `cli`: command lines whose every flag can come from the environment;
- `logs`: one JSON object per log line.

It knows nothing of VmGroups or initializers: it imports neither `vmgroup_api` nor any part.
"""
