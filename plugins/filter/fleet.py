"""Filters used by the vllm-fleet roles; thin wrappers over ``vllm_fleet``."""
from __future__ import annotations

from vllm_fleet import endpoints, engine_config, failover, gateway, network, package_file, requirements, variables, vllm_args


def _lines(value):
    return value.splitlines() if isinstance(value, str) else list(value)


def pip_unmet(installed, wanted):
    """Pins of ``wanted`` not satisfied by ``installed`` (pip freeze)."""
    return requirements.unmet(_lines(installed), _lines(wanted))


class FilterModule:
    def filters(self):
        return {
            "vllm_instance_config": engine_config.instance_config,
            "vllm_path_ancestors": engine_config.path_ancestors,
            "vllm_pip_unmet": pip_unmet,
            "vllm_fleet_package_file": package_file,
            "vllm_engine_arg_errors": vllm_args.fleet_engine_arg_errors,
            "vllm_fleet_unknown_variables": variables.unknown_variable_errors,
            "vllm_fleet_playbook_settings": variables.playbook_settings,
            "vllm_fleet_backends": endpoints.backends,
            "vllm_fleet_role_defaults": endpoints.role_defaults,
            "vllm_fleet_gateway_clients": gateway.clients,
            "vllm_fleet_limit_zones": gateway.limit_zones,
            "vllm_fleet_largest_body": gateway.largest_body,
            "vllm_fleet_size_bytes": gateway.size_bytes,
            "vllm_fleet_lua_config": gateway.lua_config,
            "vllm_fleet_endpoint_kind": gateway.endpoint_kind,
            "vllm_fleet_served_allowlist": gateway.served_allowlist,
            "vllm_fleet_allowlist_problems": gateway.allowlist_problems,
            "vllm_fleet_rate": gateway.rate_spec,
            "vllm_fleet_client_problems": gateway.client_problems,
            "vllm_fleet_in_subnet": network.in_subnet,
            "vllm_fleet_interface_of": network.interface_of,
            "vllm_fleet_vrrp_priorities": failover.vrrp_priorities,
            "vllm_fleet_vip_owners": failover.vip_owners,
            "vllm_fleet_primary_ipv4": network.primary_ipv4,
            "vllm_fleet_vrid_clashes": failover.vrid_clashes,
        }
