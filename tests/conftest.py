"""Shared pytest setup.

Everything the tests exercise imports normally: the ``vllm_fleet`` package
(node-side code included: ``plugins/module_utils/vllm_fleet`` is a link to it,
which Ansible ships to the nodes) and ``tests.helpers``.
"""
