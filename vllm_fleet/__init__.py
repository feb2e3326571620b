"""vllm-fleet: controller-side logic used by the Ansible roles and plugins.

Plain functions live here so they can be unit-tested without Ansible; the
filter plugins in ``plugins/filter`` and modules in ``plugins/modules`` are
thin wrappers around them.
"""
