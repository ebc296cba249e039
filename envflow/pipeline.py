"""Pipeline-level operations: deploys, what a promotion would do, doing it, and every environment's status.

Each operation that changes something is one transaction here: the loader
modules read the configuration, call these functions, turn their errors into
Salt's, fire events and shape the returns.
"""

import datetime
from dataclasses import dataclass, field

import pygit2

from envflow import checkout, fleet, history, holds, records, submodules
from envflow.errors import Diverged, EnvflowError, GateBlocked, Held, RevisionError
from envflow.layout import Layout
from envflow.remote import commit_info
from envflow.served import ServedDir, tree_of
from envflow.text import capped, echo, span
from envflow.text import short as _short


@dataclass
class Promotion:
    """A checked promotion of ``env``'s branch from ``old`` to ``new`` (commit ids; ``old`` may be ``None``)."""

    env: object
    upstream: object
    old: str
    new: str
    commits: list
    files: list
    submodules: list = field(default_factory=list)  # one line per submodule moved (submodules.bumps)

    def as_dict(self):
        """The promotion as the small structured dict runners return (long lists cut at 50)."""
        return {
            "env": self.env.name,
            "branch": self.env.branch,
            "from": self.upstream.name,
            "old": self.old,
            "new": self.new,
            "commits": capped([f"{_short(cid)} {summary}" for cid, summary in self.commits]),
            "files": capped([f"{status} {path}" for status, path in self.files]),
            **({"submodules": self.submodules} if self.submodules else {}),
        }


def deployed_id(env):
    """The id of the commit ``env``'s directory serves, or ``None``."""
    info = ServedDir(env.path).deployed()
    return info["id"] if info else None


def branch_tips(config, mirror):
    """The tip of each environment's branch in the fetched mirror: ``{branch: commit id}`` (missing ones left out)."""
    tips = {env.branch: mirror.tip(env.branch) for env in config.environments}
    return {branch: str(tip) for branch, tip in tips.items() if tip is not None}


def _fleet_agrees(mirror, upstream, tested_id, master):
    """Refuse a promotion of what ``upstream`` serves here while other masters serve it another commit."""
    records = fleet.read(mirror)
    # Compared with what this master's directory serves, not with its record, which may lag behind; so are the
    # records of masters deploying into this very directory (they serve what it serves, whatever they last wrote).
    records.pop(master, None)
    tree = Layout(upstream.path).tree_id(make=False)
    records = {name: data for name, data in records.items() if not fleet.serves_tree(data, upstream.name, tree)}
    others = fleet.disagreeing(records, upstream.name, master)
    others = {name: commit for name, commit in others.items() if commit != tested_id}
    if others:
        listed = ", ".join(f"{name} serves {_short(commit)}" for name, commit in sorted(others.items()))
        raise EnvflowError(
            f"envflow: the masters disagree on what {upstream.name} serves: {master} serves {_short(tested_id)}, "
            f"{listed}; promote once they agree (salt-run envflow.status shows them), or name the commit with rev="
        )


def plan(config, mirror, name, rev=None, master=None):
    """Check a promotion into environment ``name`` and return it as a :class:`Promotion`.

    The commit promoted is the one deployed in the environment before ``name``
    (what was tested there), or ``rev`` if given, which must be contained in
    it. Fast-forward only: raises :class:`Diverged` listing the commits that
    ``name``'s branch holds and the promoted commit lacks. The mirror must be
    freshly fetched.
    """
    env = config.environment(name)
    upstream = config.upstream(name)
    if upstream is None:
        raise EnvflowError(
            f"envflow: {env.name} is the first environment of the pipeline, so nothing is promoted into it; "
            f"use envflow.refresh {env.name} to deploy the tip of {env.branch}"
        )
    tested_id = deployed_id(upstream)
    if tested_id is None:
        raise EnvflowError(
            f"envflow: nothing is deployed in {upstream.name}, so nothing was tested there to promote; "
            f"run envflow.refresh {upstream.name} first"
        )
    if rev is None and master is not None:
        _fleet_agrees(mirror, upstream, tested_id, master)
    tested = mirror.commit(tested_id)
    target = mirror.commit(rev) if rev is not None else tested
    if not mirror.contains(tested.id, target.id):
        raise RevisionError(
            f"envflow: {echo(rev, quoted=False)} is not part of {_short(tested.id)}, "
            f"the commit deployed in {upstream.name}; "
            "only a commit that was tested there can be promoted"
        )
    old = mirror.tip(env.branch)
    if old is not None and not mirror.contains(target.id, old):
        if mirror.contains(tested.id, old):
            # The branch is already past the commit asked for: promoting it would rewind the branch.
            raise Diverged(
                f"envflow: {env.branch} already holds {_short(target.id)} and is ahead of it at {_short(old)}; "
                f"promoting would move it back: promote a commit that contains {_short(old)}, such as "
                f"{_short(tested.id)} deployed in {upstream.name}",
                mirror.commits(old, target.id),
            )
        extra = mirror.commits(old, target.id)
        first = config.environments[0]
        listed = ", ".join(f"{_short(cid)} {echo(summary)}" for cid, summary in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise Diverged(
            f"envflow: {env.branch} has {len(extra)} commit(s) that {_short(target.id)} from {upstream.name} "
            f"lacks: {listed}{more}; bring them into {first.branch} with salt-run envflow.backport {env.name} and "
            f"promote them through the pipeline from {first.name}, or remove them from {env.branch}",
            extra,
        )
    return Promotion(
        env=env,
        upstream=upstream,
        old=str(old) if old is not None else None,
        new=str(target.id),
        commits=mirror.commits(target.id, old),
        files=mirror.changed_files(old, target.id),
        submodules=submodules.bumps(mirror, str(old) if old is not None else None, str(target.id)),
    )


def _people(count):
    return "1 more person" if count == 1 else f"{count} more people"


def blocking_gates(promotion, mirror, now=None):
    """The gates of ``promotion``'s environment that the promoted commit has not passed, one line each.

    Each line names the gate and what would open it. The mirror must be fetched.
    """
    env, upstream, commit = promotion.env, promotion.upstream, promotion.new
    gates = env.gates
    if not gates:
        return []
    found = records.read(mirror, commit)
    blocked = []
    if gates.verified:
        blocked.extend(_unverified(records.entries(found, "verified", upstream.name), mirror, upstream.name, commit))
    if gates.soak:
        served = ServedDir(upstream.path).deployed()
        since = served.get("deployed_at") if served else None
        now = now or datetime.datetime.now(tz=datetime.timezone.utc)
        age = (now - datetime.datetime.fromisoformat(since)).total_seconds() if since else 0
        if age < gates.soak:
            blocked.append(
                f"soak: {upstream.name} has served it for {span(age)} of the {span(gates.soak)} required; "
                f"promote again in {span(gates.soak - age)}"
            )
    if gates.approvals:
        people = sorted({entry["by"] for entry in records.entries(found, "approved", env.name)})
        if len(people) < gates.approvals:
            blocked.append(
                f"approvals: {len(people)} of {gates.approvals} for {env.name} "
                f"({', '.join(people) if people else 'none yet'}); "
                f"{_people(gates.approvals - len(people))} must run salt-run envflow.approve {env.name}"
            )
    if gates.previewed:
        # A preview of some of the minions (tgt=) does not open the gate: only those of the environment's target.
        previews = [
            entry for entry in records.entries(found, "previewed", env.name) if entry.get("target") == env.target
        ]
        blocked.extend(_unpreviewed(previews, env.name, commit))
    return blocked


def _unverified(verifications, mirror, name, commit):
    """Why the ``verified`` gate is closed for ``commit`` verified in ``name`` by ``verifications`` (none: open).

    A verification from a job names the minions that passed it; together they
    must cover the minions of ``name`` on every master of the fleet that
    reports them. One recorded without a job is its author's word for all.
    """
    if not verifications:
        return [
            f"verified: {_short(commit)} was not verified in {name}; "
            f"run salt-run envflow.verify {name} jid=<its highstate job> once it passed there"
        ]
    if any(not isinstance(entry.get("minions"), list) for entry in verifications):
        return []
    passed = {str(minion) for entry in verifications for minion in entry["minions"]}
    missing = {
        master: sorted(set(minions) - passed)
        for master, minions in sorted(fleet.minions(fleet.read(mirror), name).items())
    }
    missing = {master: left for master, left in missing.items() if left}
    if not missing:
        return []
    listed = "; ".join(f"{', '.join(capped(left, 5))} of {master}" for master, left in missing.items())
    return [
        f"verified: {_short(commit)} passed in {name} on {', '.join(capped(sorted(passed), 5)) or 'no minion'}, "
        f"not yet on {listed}; run salt-run envflow.verify {name} jid=last on {', '.join(missing)} once it passed there"
    ]


def _unpreviewed(previews, name, commit):
    """Why the ``previewed`` gate of ``name`` is closed for ``commit``, given its preview records (none: open)."""
    if not previews:
        return [f"previewed: {_short(commit)} was not previewed in {name}; run salt-run envflow.preview {name}"]
    newest = previews[-1]  # records.add appends: the last entry is the newest
    if newest.get("passed") is True:
        return []
    return [
        f"previewed: the last preview of {_short(commit)} in {name} (job {newest.get('jid')}, {newest.get('at')}) "
        f"{newest.get('outcome') or 'did not pass'}; fix it and run salt-run envflow.preview {name} again"
    ]


def check_gates(promotion, mirror, force=False, reason=None):
    """Raise :class:`GateBlocked` unless every gate is open, or ``force`` with a ``reason`` bypasses them.

    Returns the gates bypassed (empty when all were open).
    """
    blocked = blocking_gates(promotion, mirror)
    if blocked and not force:
        raise GateBlocked(
            f"envflow: promoting {_short(promotion.new)} into {promotion.env.name} is blocked by "
            + "; ".join(blocked)
            + "; or bypass the gates with force=True reason='<why>'",
            blocked,
        )
    if blocked and not (reason and str(reason).strip()):
        raise GateBlocked(
            f"envflow: force=True bypasses the gates of {promotion.env.name} only with a reason, which is "
            "recorded with the promotion; add reason='<why>'",
            blocked,
        )
    return blocked


def deploy_summary(result):
    """The small view of a deploy's result that runners return: commit ids, what happened, any warning."""
    return {
        "old": result["old"]["id"] if result["old"] else None,
        "new": result["new"]["id"],
        "changed": result["changed"],
        "moved_aside": result["moved_aside"],
        "refused_links": [f"{link['path']} -> {link['target']}" for link in result["refused_links"]],
        "refreshed": result["refreshed"],
        "pillar_refreshed": result.get("pillar_refreshed", []),
        "discarded": result["discarded"],
        **({"minions": result["minions"]} if "minions" in result else {}),
        **({"pinned": result["pinned"], "comment": result["comment"]} if result.get("pinned") else {}),
        **({"warning": result["warning"]} if result.get("warning") else {}),
    }


def preview_summary(preview):
    """The small view of :func:`deploy_preview` that runners return: commit ids, hand edits, any pin or refusal."""
    return {
        "old": preview["old"]["id"] if preview["old"] else None,
        "new": preview["new"]["id"],
        "drift": preview["drift"],
        # A pin it would keep serving, or the freeze that would refuse it, and why.
        **{key: preview[key] for key in ("pinned", "comment", "refused") if key in preview},
    }


def target(mirror, env, rev=None, branch=None):
    """The commit a deploy of ``env`` serves: ``rev``, else the tip of ``branch`` or of ``env``'s own branch."""
    if rev is not None and branch is not None:
        raise RevisionError("envflow: give rev or branch, not both")
    if rev is not None:
        return mirror.commit(rev)
    branch = branch or env.branch
    if mirror.tip(branch) is None:
        raise RevisionError(
            f"envflow: branch {echo(branch)} does not exist in {mirror.shown}; push it, or fix the branch of {env.name}"
        )
    return mirror.commit(branch)


def deploy(config, mirror, name, rev=None, branch=None, force=False, reason=None, by=None):
    """Deploy into environment ``name`` (see :func:`target`) as one transaction; the result of :meth:`ServedDir.deploy`.

    A pinned environment keeps serving its pinned commit whatever was asked
    (the result says so under ``pinned`` and ``comment``); a frozen one
    refuses a deploy that would change it (:class:`Held`), unless ``force``
    with a ``reason``. A deploy that changed something is recorded in the
    history, by ``by``; when that fails the result has a ``warning``.
    """
    env = config.environment(name)
    commit = target(mirror, env, rev, branch)
    served = ServedDir(env.path)
    with served.deploying(mirror.objects, commit, submodules.Composer(mirror, config.submodules)) as deployment:
        found = history.holds(mirror)
        pin = history.pin_of(found, env.name)
        before = deployment.served_id()
        if pin:
            deployment.commit = mirror.commit(pin["commit"])
        elif rev is None and _served_newer(mirror, before, deployment.commit.id):
            # The directory serves a descendant of the tip fetched, or a commit this mirror has not fetched yet:
            # another master deploying into this directory served a newer tip since this one fetched. Serve the
            # branch's tip as it is now.
            mirror.fetch()
            deployment.commit = target(mirror, env, branch=branch)
        bypassed = []
        if force or before != str(deployment.commit.id):
            bypassed = holds.overridden(found, env.name, "deploy", force=force, reason=reason)
        result = deployment.switch(deployment.prepare(force=force))
        if result["changed"]:
            result["changes"] = tree_changes(mirror, before, deployment.commit.id, deployment.switched)
            entry = {"action": "deployed", "env": env.name, "by": by, "from": before, "to": str(deployment.commit.id)}
            moved = submodules.bumps(mirror, before, str(deployment.commit.id))
            if moved:
                entry["submodules"] = moved
            if bypassed:
                entry.update(bypassed=bypassed, reason=holds.reason_text(reason, "a forced deploy"))
            warning = holds.record_after(mirror, entry)
            if warning:
                result["warning"] = warning
    if pin:
        result["pinned"] = pin
        result["comment"] = holds.pinned_comment(env.name, pin)
    return result


def tree_changes(mirror, old_id, new_id, switched):
    """What a switch from ``old_id``'s tree to ``new_id``'s changed, for the master's caches: ``{"paths", "listing"}``.

    ``switched`` is the deployment's pair of records, of the slot served
    before and of the one served now (:attr:`envflow.served.Deployment.switched`).
    ``paths`` are the paths whose content or kind differ (added, deleted,
    modified, changed type), ``listing`` whether the list of paths changed
    (anything but a modified file). The trees are those the records name (a
    submodule's files included). ``None`` when that is not known: nothing
    served before, a record that is not of that switch, a tree the mirror
    lacks, or a tree holding symlinks, through which a path's content can
    change while the path does not.
    """
    old_record, record = switched or (None, None)
    if old_id is None or record is None or old_record is None or record.links or old_record.links:
        return None
    if (old_record.commit_id, record.commit_id) != (old_id, str(new_id)):
        return None
    try:
        old_tree, new_tree = tree_of(mirror.repo, old_record), tree_of(mirror.repo, record)
        if old_tree is None or new_tree is None:
            return None
        changed = checkout.changes(old_tree, new_tree)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    listing = any(old is None or new is None or old[1] != new[1] for _path, old, new in changed)
    return {"paths": [path for path, _old, _new in changed], "listing": listing}


def _served_newer(mirror, served_id, commit_id):
    """Whether ``served_id`` may be newer than ``commit_id``: a descendant of it, or a commit the mirror lacks."""
    if served_id is None or served_id == str(commit_id):
        return False
    if served_id not in mirror.repo:
        return True
    try:
        return mirror.contains(served_id, commit_id)
    except (KeyError, ValueError, pygit2.GitError):
        return False


def served_id(served):
    """The commit ``served`` holds, or ``None`` (also when its record is lost: the deploy then says so)."""
    try:
        info = served.deployed()
    except EnvflowError:
        return None
    return info["id"] if info else None


def deploy_preview(config, mirror, name, rev=None, branch=None, force=False):
    """What a deploy into ``name`` would do, changing nothing: the commit served, the one to serve, the hand edits.

    With ``force``, a tree without a record reads as nothing served. A pinned
    environment would serve its pin (``pinned``, ``comment``); for a frozen
    one, ``refused`` is why a deploy that changes it would be refused.
    """
    env = config.environment(name)
    commit = target(mirror, env, rev, branch)
    found = history.holds(mirror)
    pin = history.pin_of(found, env.name)
    if pin:
        commit = mirror.commit(pin["commit"])
    served = ServedDir(env.path)
    try:
        old, drift = served.deployed(), served.drift(mirror.objects)
    except EnvflowError:
        if not force:
            raise
        old, drift = None, {"added": [], "modified": [], "deleted": []}
    preview = {"env": name, "path": env.path, "new": commit_info(commit), "old": old, "drift": drift, "test": True}
    moved = submodules.bumps(mirror, old["id"] if old else None, str(commit.id))
    if moved:
        preview["submodules"] = moved
    if pin:
        preview["pinned"] = pin
        preview["comment"] = holds.pinned_comment(env.name, pin)
    try:
        holds.overridden(found, env.name, "deploy", force=force)
    except Held as exc:
        preview["refused"] = str(exc)  # if it would change anything
    return preview


@dataclass
class Promoted:
    """What :func:`promote` did: the ``report`` to return, the ``deployed`` result, whether the branch ``moved``."""

    report: dict
    deployed: dict = None
    moved: bool = False
    bypassed: list = field(default_factory=list)


def promote(config, mirror, name, rev=None, force=False, reason=None, by=None, dry_run=False, master=None):
    """Promote into ``name`` what the environment before it serves (or ``rev``), as one transaction.

    In order, under the directory's lock: the plan (fast-forward only), the
    environment's freeze and pin (:func:`envflow.holds.overridden`), the gates
    (unless the branch already holds the commit), the standby tree prepared
    (refused on hand edits unless ``force``), a bypass of closed gates
    recorded on the remote (``force`` with ``reason``, by ``by``), the branch
    moved as a compare-and-swap, the switch, then the entry in the history
    (which ends a pin that ``force`` overrode). Anything refused before the
    branch moves leaves the branch and the directory as they were. The mirror
    must be freshly fetched. Given this host's ``master`` id, a promotion
    without ``rev`` is refused while other masters that still report serve
    the upstream environment another commit (see :mod:`envflow.fleet`).
    With ``dry_run`` nothing changes and the report
    also holds the directory's ``path``, what it ``served``, its closed
    ``gates``, the ``holds`` in the way and its hand edits (``drift``).
    """
    promotion = plan(config, mirror, name, rev=rev, master=master)
    env = promotion.env
    served = ServedDir(env.path)
    report = promotion.as_dict()
    if dry_run:
        deployed = served.deployed()
        report.update(
            dry_run=True,
            path=env.path,
            served=deployed["id"] if deployed else None,
            gates=blocking_gates(promotion, mirror) if promotion.old != promotion.new else [],
            holds=[line for _hold, line, _lift in holds.in_the_way(history.holds(mirror), env.name, pinned_too=True)],
            drift=served.drift(mirror.objects),
        )
        return Promoted(report)
    moves = promotion.old != promotion.new
    compose = submodules.Composer(mirror, config.submodules)
    with served.deploying(mirror.objects, mirror.commit(promotion.new), compose) as deployment:
        # Read under the lock: a pin or freeze set meanwhile on this master holds this promotion back.
        found = history.holds(mirror)
        served_before = deployment.served_id()
        bypassed = []
        if moves or force or served_before != promotion.new:
            bypassed = holds.overridden(found, env.name, "promote", force=force, reason=reason, pinned_too=True)
        # The pin a forced promotion overrides, which its history entry ends; none otherwise.
        ended = history.pin_of(found, env.name) if bypassed else None
        # A branch that holds the commit already needs no gate: only its directory may lag behind.
        gates = check_gates(promotion, mirror, force=force, reason=reason) if moves else []
        prepared = deployment.prepare(force=force, remedy="promote with force=True")
        if gates:
            # Recorded before the branch moves: a bypass never goes unrecorded.
            entry = {"by": by, "reason": reason, "gates": gates, "from": promotion.old}
            records.add(mirror, promotion.new, "forced", env.name, entry)
        bypassed += gates
        if bypassed:
            report["bypassed"] = bypassed
        if moves:
            mirror.update_branch(env.branch, promotion.old, promotion.new)
            ended = _no_hold_since(mirror, promotion, force, reason) or ended
        try:
            result = deployment.switch(prepared)
        except (EnvflowError, OSError) as exc:
            if not moves:
                raise
            raise EnvflowError(
                f"envflow: {env.branch} now points at {_short(promotion.new)}, but deploying it to {env.name} "
                f"failed: {exc}; fix that, then run envflow.refresh {env.name}"
            ) from None
        if result["changed"]:
            result["changes"] = tree_changes(mirror, served_before, promotion.new, deployment.switched)
        if moves or result["changed"]:
            warning = holds.record_after(
                mirror, *_promotion_entry(promotion, served_before, bypassed, reason, by, ended)
            )
            if warning:
                report["warning"] = warning
    return Promoted(report, deployed=result, moved=moves, bypassed=bypassed)


def _no_hold_since(mirror, promotion, force, reason):
    """After the branch moved: undo the move if a pin or freeze was set meanwhile (on another master, say).

    The holds were read before the branch moved, and git has no compare-and-swap
    of two references at once: a hold recorded in between would be slipped past.
    So the history is fetched again once the branch has moved. A hold found there
    (and not overridden) moves the branch back and refuses the promotion; a hold
    recorded after this look came after the promotion, and holds from then on.
    Returns the pin found there that a forced promotion overrides, or ``None``.
    """
    mirror.fetch()
    found = history.holds(mirror)
    try:
        if holds.overridden(found, promotion.env.name, "promote", force=force, reason=reason, pinned_too=True):
            return history.pin_of(found, promotion.env.name)
        return None
    except Held as exc:
        try:
            if promotion.old is None:
                raise EnvflowError(f"{promotion.env.branch} did not exist before") from None
            mirror.update_branch(promotion.env.branch, promotion.new, promotion.old, rewind=True)
        except EnvflowError as undo:
            raise EnvflowError(
                f"{exc}; it was set while this promotion ran, and moving {promotion.env.branch} back to "
                f"{_short(promotion.old)} failed: {undo}"
            ) from None
        raise Held(f"{exc} (set while this promotion ran: {promotion.env.branch} was moved back)", exc.hold) from None


def _promotion_entry(promotion, served_before, bypassed, reason, by, ended=None):
    """The history entry of a promotion (``deployed`` when the branch held the commit already), and its change.

    The change ends ``ended``, the pin a forced promotion overrode, and no other: a pin set on another master
    after the promotion looked (see :func:`_no_hold_since`) holds from then on.
    """
    env = promotion.env.name
    moved = promotion.old != promotion.new
    entry = {
        "action": "promoted" if moved else "deployed",
        "env": env,
        "by": by,
        "from": promotion.old if moved else served_before,
        "to": promotion.new,
        "upstream": promotion.upstream.name,
    }
    if moved and served_before != promotion.old:
        entry["served_before"] = served_before
    if promotion.submodules:
        entry["submodules"] = promotion.submodules
    if bypassed:
        entry.update(bypassed=bypassed, reason=holds.reason_text(reason, "a forced promotion"))

    def change(found):
        # A forced promotion into a pinned environment ends the pin: it serves the promoted commit now.
        if ended is not None and found.get(env, {}).get("pin") == ended:
            found[env].pop("pin")
        return found

    return entry, change


def _served(env):
    """What ``env``'s directory serves, as status shows it: ``{id, summary, since}``, or ``None``."""
    info = ServedDir(env.path).deployed()
    return {"id": info["id"], "summary": info["summary"], "since": info["deployed_at"]} if info else None


def _ahead(mirror, tip, served_id):
    """How many commits ``tip`` has beyond ``served_id``, when it contains it (else ``None``)."""
    if tip is None or served_id is None or served_id not in mirror.repo or not mirror.contains(str(tip), served_id):
        return None
    return len(mirror.commits(tip, served_id, limit=1000))


def _closed_gates(config, mirror, env):
    """The closed gates of the next promotion into ``env``; ``None`` when no promotion into it is possible now."""
    try:
        promotion = plan(config, mirror, env.name)
        return blocking_gates(promotion, mirror) if promotion.old != promotion.new else []
    except EnvflowError:
        return None


def status(config, mirror, name=None):
    """Describe each environment (or just ``name``): branch, remote tip, deployed commit, sync, waiting commits, drift.

    Each entry has ``branch``, ``remote`` (the branch tip), ``deployed`` (the
    commit served), ``in_sync``, ``waiting`` (commits served upstream and not
    on the branch), ``drift`` (files edited by hand); ``served`` (``id``,
    ``summary``, ``since``), ``ahead`` (commits on the branch beyond the one
    served, when the branch contains it: a pinned or rolled-back environment),
    its ``pin`` and ``freeze`` (see :mod:`envflow.history`) and ``gates`` (the
    closed gates of the next promotion into it; ``None`` when none is
    possible now). An environment whose directory cannot be read reports why
    in ``problem``; the others are still described.
    """
    report = {}
    found = history.holds(mirror)
    for env in config.select(name):
        tip = mirror.tip(env.branch)
        entry = report[env.name] = {"branch": env.branch, "remote": str(tip) if tip is not None else None}
        held = {"pin": history.pin_of(found, env.name), "freeze": history.freeze_of(found, env.name)}
        try:
            served = _served(env)
            drift = ServedDir(env.path).drift(mirror.objects)
        except EnvflowError as exc:
            entry.update(deployed=None, in_sync=False, waiting=None, drift=None, problem=str(exc))
            entry.update(served=None, ahead=None, **held, gates=None)
            continue
        deployed = served["id"] if served else None
        upstream = config.upstream(env.name)
        try:
            upstream_id = deployed_id(upstream) if upstream else None
        except EnvflowError:
            upstream_id = None  # reported on the upstream's own entry
        waiting = None
        if upstream_id is not None and upstream_id in mirror.repo:
            waiting = len(mirror.commits(upstream_id, tip, limit=1000))
        entry.update(
            deployed=deployed,
            in_sync=deployed is not None and deployed == entry["remote"],
            waiting=waiting,
            drift=sum(len(paths) for paths in drift.values()),
            served=served,
            ahead=_ahead(mirror, tip, deployed),
            **held,
            gates=_closed_gates(config, mirror, env) if upstream else None,
        )
    return report
