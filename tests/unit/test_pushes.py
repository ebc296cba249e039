"""envflow.pushes on a real directory: bursts of pushes to one environment coalesce, and deploys never overlap.

Threads stand for the reactor's worker threads. Which thread does what when
is set by events and barriers, never by sleeping; ``deploy`` stands for
fetching and deploying the branch tip, and records what the "remote" held
when it started.
"""

import itertools
import os
import threading

import pytest

from envflow import pushes
from envflow.config import parse
from envflow.errors import Drift, EnvflowError
from envflow.layout import Layout
from envflow.locking import attempted
from tests.gitrepo import config

WAIT = 60  # seconds before a test that waits for a thread gives up: only a broken lock makes it wait that long


@pytest.fixture
def pipeline(tmp_path):
    return parse(config("/srv/git/automation.git", tmp_path / "srv"))


@pytest.fixture
def env(pipeline):
    return pipeline.environment("test")


def marked(env):
    return os.path.exists(Layout(env.path).push_pending)


def lock_is_free(env):
    with attempted(Layout(env.path).push_lock) as holding:
        return holding


class Worker(threading.Thread):
    """A thread serving one push with ``coalesced``; ``result`` is what it returned."""

    def __init__(self, env, deploy):
        super().__init__(daemon=True)
        self.env, self.deploy, self.result, self.raised = env, deploy, None, None

    def run(self):
        try:
            self.result = pushes.coalesced(self.env, self.deploy)
        except BaseException as exc:  # pylint: disable=broad-except
            self.raised = exc

    def finish(self):
        self.join(WAIT)
        assert not self.is_alive(), "a push did not return"
        if self.raised:
            raise self.raised
        return self.result


def test_a_single_push_deploys_once(env):
    calls = []

    def deploy():
        calls.append(marked(env))
        return {"new": "c1"}

    assert pushes.coalesced(env, deploy) == {"deploys": [{"new": "c1"}], "handed_off": False}
    assert calls == [False]  # the mark is taken before the deploy, so a push during it marks again
    assert not marked(env) and lock_is_free(env)
    # Bookkeeping lives beside the served path, never inside it.
    assert not os.path.exists(env.path)


def test_a_push_while_another_is_served_hands_off_and_the_holder_deploys_again(env):
    started, release = threading.Event(), threading.Event()
    tips, tip = [], ["c1"]

    def slow_deploy():
        tips.append(tip[0])
        if len(tips) == 1:
            started.set()
            assert release.wait(WAIT)
        return {"new": tips[-1]}

    holder = Worker(env, slow_deploy)
    holder.start()
    assert started.wait(WAIT)
    tip[0] = "c2"  # pushed while the first deploy runs

    def must_not_deploy():
        raise AssertionError("a handed-off push deployed")

    # Returns at once, while the holder's deploy is still blocked.
    assert pushes.coalesced(env, must_not_deploy) == {"deploys": [], "handed_off": True}
    assert marked(env) and holder.is_alive()
    release.set()
    assert holder.finish() == {"deploys": [{"new": "c1"}, {"new": "c2"}], "handed_off": False}
    assert tips == ["c1", "c2"] and not marked(env) and lock_is_free(env)


def test_a_push_while_another_process_holds_the_lock_is_served_by_the_next_push(env):
    layout = Layout(env.path)
    deploys = []
    with attempted(layout.push_lock) as holding:
        assert holding
        assert pushes.coalesced(env, lambda: deploys.append("early")) == {"deploys": [], "handed_off": True}
    assert deploys == [] and marked(env)
    # The mark left for the holder and the next push's own are one deploy.
    assert pushes.coalesced(env, lambda: deploys.append("next") or "next") == {
        "deploys": ["next"],
        "handed_off": False,
    }
    assert deploys == ["next"] and not marked(env)


def test_a_push_marked_after_the_holders_last_look_is_served_when_it_lets_go(env, monkeypatch):
    """The window between the holder's last look at the mark and its letting go of the lock.

    A push there finds the lock held and returns; the holder sees its mark
    once it let go, takes the lock again and deploys for it.
    """
    take_mark = pushes._take_mark  # pylint: disable=protected-access
    tip, deployed, late = ["c1"], [], []

    def deploy():
        deployed.append(tip[0])
        return tip[0]

    def looking(layout):
        found = take_mark(layout)
        if not found and not late:
            tip[0] = "c2"
            late.append(pushes.coalesced(env, lambda: pytest.fail("the late push deployed itself")))
        return found

    monkeypatch.setattr(pushes, "_take_mark", looking)
    assert pushes.coalesced(env, deploy) == {"deploys": ["c1", "c2"], "handed_off": False}
    assert late == [{"deploys": [], "handed_off": True}]
    assert deployed == ["c1", "c2"] and not marked(env) and lock_is_free(env)


class Remote:
    """What a burst of pushes does to the branch, and what the deploys saw; every step numbered in order."""

    def __init__(self):
        self.order = itertools.count()  # next() is atomic in CPython: a total order of the steps recorded
        self.guard = threading.Lock()
        self.returns = threading.Condition(self.guard)
        self.reset()

    def reset(self):
        """Forget the last burst."""
        self.tip = 0
        self.marks = []  # the step at which each push's mark was made
        self.starts = []  # (step, tip seen) of each deploy
        self.running = 0
        self.most_running = 0
        self.returned = 0

    def push(self):
        with self.guard:
            self.tip += 1

    def deploy_started(self):
        with self.guard:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.starts.append((next(self.order), self.tip))
            return len(self.starts)

    def deploy_ended(self):
        with self.guard:
            self.running -= 1

    def push_returned(self):
        with self.returns:
            self.returned += 1
            self.returns.notify_all()


@pytest.fixture
def remote(monkeypatch):
    """A :class:`Remote` that also records when ``coalesced`` marks the environment."""
    remote = Remote()
    mark = pushes._mark  # pylint: disable=protected-access

    def marking(layout):
        # Numbered as it begins: a deploy that starts after that, and before the file is made, is not the
        # last one, since the holder's next look finds the file.
        remote.marks.append(next(remote.order))
        mark(layout)

    monkeypatch.setattr(pushes, "_mark", marking)
    return remote


def _burst(env, remote, pushers, deploy):
    """``pushers`` threads that each push and serve it the moment all are ready; what each returned."""
    barrier = threading.Barrier(pushers)
    results = [None] * pushers

    def pusher(index):
        barrier.wait(WAIT)
        remote.push()
        try:
            results[index] = pushes.coalesced(env, deploy)
        finally:
            remote.push_returned()

    threads = [threading.Thread(target=pusher, args=(index,), daemon=True) for index in range(pushers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not [thread for thread in threads if thread.is_alive()], "a push did not return"
    return results


def _check_burst(env, remote, results, pushers):
    """What holds after any burst; the deploys made."""
    deploys = [result for pushed in results for result in pushed["deploys"]]
    assert len(remote.marks) == pushers == len(results)
    assert remote.most_running == 1, "two deploys ran at once"
    assert 1 <= len(deploys) <= pushers  # each deploy takes a mark, and each push marks once
    # The last deploy started after the last push's mark, and saw the branch after every push.
    last_start, last_tip = remote.starts[-1]
    assert last_start > max(remote.marks)
    assert last_tip == remote.tip == pushers
    assert all(not (result["deploys"] and result["handed_off"]) for result in results)
    assert not any("error" in result for result in results)
    assert not marked(env) and lock_is_free(env)
    return deploys


@pytest.mark.parametrize("pushers", [2, 20])
def test_a_burst_of_pushes_coalesces_into_few_deploys_that_never_overlap(env, remote, pushers):
    def deploy():
        number = remote.deploy_started()
        try:
            if number == 1:
                # Slow: the first deploy lasts until every other push has returned, handed off to it.
                with remote.returns:
                    assert remote.returns.wait_for(lambda: remote.returned >= pushers - 1, WAIT)
            return number
        finally:
            remote.deploy_ended()

    results = _burst(env, remote, pushers, deploy)
    deploys = _check_burst(env, remote, results, pushers)
    # The first deploy, and one more for the marks made while it ran (unless all came before it began),
    # both by the one push that took the lock; every other push was handed off to it.
    assert deploys in ([1], [1, 2])
    assert sorted(result["handed_off"] for result in results) == [False] + [True] * (pushers - 1)


def test_bursts_in_a_row_with_deploys_that_take_turns_with_the_pushes(env, remote):
    """Twenty pushes at once, five times, each deploy lasting until another push returned (or all had)."""
    pushers = 20
    for _round in range(5):
        remote.reset()

        def deploy():
            number = remote.deploy_started()
            try:
                with remote.returns:
                    seen = remote.returned
                    assert remote.returns.wait_for(
                        lambda seen=seen: remote.returned > seen or remote.returned >= pushers - 1, WAIT
                    )
                return number
            finally:
                remote.deploy_ended()

        _check_burst(env, remote, _burst(env, remote, pushers, deploy), pushers)


def test_an_error_stops_serving_and_the_next_push_tries_again(env):
    failed, tips = [], []

    def failing():
        failed.append(True)
        raise Drift("envflow: /srv/salt/test was edited by hand (modified: top.sls)", {"modified": ["top.sls"]})

    assert pushes.coalesced(env, failing) == {
        "deploys": [],
        "handed_off": False,
        "error": "envflow: /srv/salt/test was edited by hand (modified: top.sls)",
    }
    assert failed == [True] and lock_is_free(env)
    # A push handed off while the failing deploy ran is not served by it: the next push serves both.
    started, release = threading.Event(), threading.Event()

    def fails_slowly():
        started.set()
        assert release.wait(WAIT)
        raise EnvflowError("envflow: the remote did not answer")

    holder = Worker(env, fails_slowly)
    holder.start()
    assert started.wait(WAIT)
    assert pushes.coalesced(env, lambda: pytest.fail("a handed-off push deployed")) == {
        "deploys": [],
        "handed_off": True,
    }
    release.set()
    assert holder.finish() == {"deploys": [], "handed_off": False, "error": "envflow: the remote did not answer"}
    assert marked(env) and lock_is_free(env)

    def deploy():
        tips.append("c3")
        return "c3"

    assert pushes.coalesced(env, deploy) == {"deploys": ["c3"], "handed_off": False}
    assert tips == ["c3"] and not marked(env)


def test_an_error_after_a_deploy_keeps_what_was_deployed(env):
    started, release = threading.Event(), threading.Event()
    calls = []

    def deploy():
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            started.set()
            assert release.wait(WAIT)
            return "c1"
        raise EnvflowError("envflow: test is frozen")

    holder = Worker(env, deploy)
    holder.start()
    assert started.wait(WAIT)
    assert pushes.coalesced(env, lambda: pytest.fail("a handed-off push deployed"))["handed_off"] is True
    release.set()
    assert holder.finish() == {"deploys": ["c1"], "handed_off": False, "error": "envflow: test is frozen"}
    assert calls == [1, 2] and lock_is_free(env)


def test_serve_touches_only_the_environments_whose_branch_was_pushed(pipeline):
    served = []

    def deploy(env):
        served.append(env.name)
        return {"new": env.branch}

    assert pushes.serve(pipeline, ["master", "feature/x", "develop"], deploy) == {
        "test": {"deploys": [{"new": "develop"}], "handed_off": False},
        "prod": {"deploys": [{"new": "master"}], "handed_off": False},
    }
    assert served == ["test", "prod"]  # in pipeline order, whatever the push's
    assert not os.path.exists(Layout(pipeline.environment("stage").path).home)
    served.clear()
    assert pushes.serve(pipeline, ["feature/x", "refs/heads/stage"], deploy) == {}
    assert pushes.serve(pipeline, [], deploy) == {}
    assert served == []
    assert not os.path.exists(Layout(pipeline.environment("stage").path).home)
