"""Integration tests: a real salt-master and salt-minion, real git repositories, no mocks."""
