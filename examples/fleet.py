"""Clients for a vllm-fleet gateway, built on the official OpenAI Python SDK.

Configuration comes from the environment, never from the command line:

    OPENAI_BASE_URL   the gateway's API, e.g. https://vllm.example.internal/v1
    OPENAI_API_KEY    a client key the gateway knows (gateway_clients)
    VLLM_FLEET_CA     optional: the CA bundle that signed the gateway's
                      certificate (a private CA); the system store otherwise
    VLLM_FLEET_MODEL  optional: the served model's name; the first one the
                      gateway lists otherwise

The SDK retries connection errors, 429 (honouring Retry-After) and 5xx
answers itself; FLEET_RETRIES sets how many times.
"""
from __future__ import annotations

import os

import openai

FLEET_RETRIES = 4
TIMEOUT_S = 60


def _verify() -> str | bool:
    return os.environ.get("VLLM_FLEET_CA") or True


def client() -> openai.OpenAI:
    return openai.OpenAI(max_retries=FLEET_RETRIES, timeout=TIMEOUT_S,
                         http_client=openai.DefaultHttpxClient(verify=_verify()))


def async_client() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(max_retries=FLEET_RETRIES, timeout=TIMEOUT_S,
                              http_client=openai.DefaultAsyncHttpxClient(verify=_verify()))


def model(api: openai.OpenAI) -> str:
    return os.environ.get("VLLM_FLEET_MODEL") or api.models.list().data[0].id
