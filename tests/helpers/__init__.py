"""What several test files share: fakes, oracles, forked-child runners and the scripts tests run as children
(tests/README.md lists them)."""
