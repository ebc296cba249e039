#!py
"""Reactor SLS for salt/netapi/hook/envflow (a git server's push, through salt-api's /hook/envflow).

envflow checks the request's signature against envflow:webhook:secret, in constant time, and
refuses anything else in one warning line in the master's log and the event
salt/envflow/hook/refused. A genuine push that moves branches the environments serve becomes one
runner.envflow.pushed reaction, given only the branches and where the push came from: the body,
the signature and any token stay in the hook event. Wired by push.conf; see the docs' "Deploying
on push".
"""

from envflow import hooks


def run():
    return hooks.reactor_chunks(__opts__, data)  # noqa: F821 - set by Salt's py renderer
