"""``microblog status``: how far each projection and the outbox lag, from the services'
own ``stats`` RPCs, checked against bounds.

* messages: the log's head, the outbox relay's ``published`` position, the backlog between
  them (events committed but not yet on the broker). Its inbox read model is written in the
  same transaction as each append, so it has no position of its own and never lags.
* users: the same for its log (registrations and profile edits); nothing in the system
  projects it yet.
* notifications: the projection's tracking position, the feed's head (the messages log's
  head) and the lag between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def gather(call, max_lag: int, max_backlog: int) -> Report:
    """``call(service, method)`` makes an RPC (raising when the service does not answer)."""
    report = Report()
    # The projection's position first, then the head: the head read later is never
    # behind it, so the lag is never negative.
    try:
        projection = call("notifications", "stats")
    except Exception as exc:
        projection = None
        report.lines.append(f"notifications  unavailable ({_reason(exc)})")
        report.problems.append("the notifications service did not answer: its lag is unknown")
    outboxes = {}
    for service in ("messages", "users"):
        try:
            outboxes[service] = call(service, "stats")
        except Exception as exc:
            report.lines.append(f"{service:<14} unavailable ({_reason(exc)})")
            report.problems.append(f"the {service} service did not answer: its log head and outbox backlog are unknown")
    for service, outbox in outboxes.items():
        report.lines.append(f"{service:<14} log head {outbox['head']}  published {outbox['published']}  "
                            f"outbox backlog {outbox['backlog']}")
        if service == "messages":
            report.lines.append("  inbox        written with each append: no lag")
        if outbox["backlog"] > max_backlog:
            report.problems.append(f"{service} outbox backlog {outbox['backlog']} is over --max-backlog {max_backlog}")
    outbox = outboxes.get("messages")
    if projection is not None:
        head = outbox["head"] if outbox is not None else projection.get("head")
        if head is None:
            report.lines.append(f"notifications  position {projection['position']}  head unknown")
        else:
            lag = max(head - projection["position"], 0)
            report.lines.append(f"notifications  position {projection['position']}  head {head}  lag {lag}")
            if lag > max_lag:
                report.problems.append(f"notifications lag {lag} is over --max-lag {max_lag}")
    return report


def _reason(exc: BaseException) -> str:
    from deploy.startup import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"
