"""Promotions, refreshes, rollbacks and freezes of one environment, run at once in separate processes.

Each process opens its own mirror (the same cache directory, as processes of
one master do) and runs one operation the moment all are ready. Afterwards:
every operation succeeded, found nothing to do or was refused in one line;
the branch only ever moved forward; the directory serves exactly the tree of
one commit (the pinned one, if a rollback won last); and the history holds
exactly one entry per change the operations reported.
"""

import itertools
import multiprocessing
import os

from envflow import history, holds, pipeline
from envflow.config import parse
from envflow.errors import EnvflowError
from envflow.remote import Mirror
from envflow.served import ServedDir
from tests.gitrepo import config as make_config
from tests.gitrepo import git

OPERATIONS = [
    "promote",
    "promote",
    "promote",
    "refresh",
    "refresh",
    "refresh",
    "rollback",
    "rollback",
    "freeze",
    "freeze",
    "thaw",
    "unpin",
]


def _operate(operation, number, raw_config, cachedir, barrier):
    """Run one ``operation`` on prod; return ``(operation, outcome, action or message)``."""
    config = parse(raw_config)
    by = f"{operation}-{number}"
    with Mirror(config.repo, cachedir) as mirror:
        mirror.fetch()
        barrier.wait()
        try:
            if operation == "promote":
                done = pipeline.promote(config, mirror, "prod", by=by)
                changed = done.moved or done.deployed["changed"]
                action, warning = ("promoted" if done.moved else "deployed"), done.report.get("warning")
            elif operation == "refresh":
                mirror.fetch()
                done = pipeline.deploy(config, mirror, "prod", by=by)
                changed, action, warning = done["changed"], "deployed", done.get("warning")
            elif operation == "rollback":
                done = holds.rollback(config, mirror, "prod", reason=f"rollback {number}", by=by)
                changed, action = done["changed"], ("rolled_back" if done.get("rolled_back") else "pinned")
                warning = done.get("warning")
            else:
                act = {"freeze": holds.freeze, "thaw": holds.thaw, "unpin": holds.unpin}[operation]
                kwargs = {"reason": f"freeze {number}", "until": "1h"} if operation == "freeze" else {}
                done = act(config, mirror, "prod", by=by, **kwargs)
                changed, warning = done["changed"], None
                action = {"freeze": "frozen", "thaw": "thawed", "unpin": "unpinned"}[operation]
        except EnvflowError as exc:
            return operation, "refused", str(exc)
        if warning:
            return operation, "warning", warning
        return operation, ("changed" if changed else "nothing"), action if changed else None


def _chain_moves_forward(mirror, commits):
    """Whether each commit in ``commits`` (oldest first) contains the one before it."""
    return all(mirror.contains(newer, older) for older, newer in itertools.pairwise(commits))


def test_parallel_operations_on_one_environment_stay_consistent(remote, tmp_path, spawn_barrier):
    raw = make_config(remote.path, tmp_path / "srv")
    config = parse(raw)
    cachedir = str(tmp_path / "cache")
    with Mirror(remote.path, cachedir) as mirror:
        for env in config.environments:
            mirror.fetch()
            pipeline.deploy(config, mirror, env.name, by="setup")
        for label in ("v2", "v3"):
            remote.commit("develop", {"web/init.sls": f"# web {label}\n", "web/other.sls": f"# {label}\n"})
            mirror.fetch()
            pipeline.deploy(config, mirror, "test", by="setup")
            pipeline.promote(config, mirror, "stage", by="setup")
            if label == "v2":
                pipeline.promote(config, mirror, "prod", by="setup")
        before = len(history.entries(mirror, limit=None))
    start_tip = remote.tip("master")

    context = multiprocessing.get_context("spawn")
    barrier = spawn_barrier(len(OPERATIONS))
    with context.Pool(len(OPERATIONS)) as pool:
        outcomes = pool.starmap(
            _operate, [(operation, n, raw, cachedir, barrier) for n, operation in enumerate(OPERATIONS)]
        )

    print(*outcomes, sep="\n")
    for operation, outcome, detail in outcomes:
        assert outcome in ("changed", "nothing", "refused"), (operation, outcome, detail)
        if outcome == "refused":
            assert detail.startswith("envflow: ") and "\n" not in detail and len(detail) < 400, detail
    with Mirror(remote.path, cachedir) as mirror:
        mirror.fetch()
        entries = history.entries(mirror, limit=None)
        added = entries[: len(entries) - before]
        # Exactly one entry per change that happened, of the kind each operation reported.
        assert sorted(entry["action"] for entry in added) == sorted(
            detail for _operation, outcome, detail in outcomes if outcome == "changed"
        )
        assert len({entry["by"] for entry in added}) == len(added)
        # The branch only moved forward: each promotion's entry starts where the one before ended.
        promoted = [entry for entry in reversed(added) if entry["action"] == "promoted"]
        chain = [start_tip, *(entry["to"] for entry in promoted)]
        assert [entry["from"] for entry in promoted] == chain[:-1]
        assert _chain_moves_forward(mirror, chain) and remote.tip("master") == chain[-1]
        # The directory serves one commit's whole tree: the pinned one while a pin stands.
        served = ServedDir(config.environment("prod").path).deployed()["id"]
        pin = history.pin_of(history.holds(mirror), "prod")
        if pin:
            assert served == pin["commit"]
        last_serving = next(entry for entry in added + entries if entry["action"] in holds.SERVING)
        assert served == last_serving["to"]
    listed = git("ls-tree", "-r", "--name-only", served, cwd=remote.path).splitlines()
    root = config.environment("prod").path
    on_disk = sorted(
        os.path.relpath(os.path.join(top, name), root) for top, _dirs, names in os.walk(root + "/") for name in names
    )
    assert on_disk == sorted(listed)
    for path in listed:
        with open(os.path.join(root, path), "rb") as handle:
            assert handle.read() == git("show", f"{served}:{path}", cwd=remote.path, text=False)
