#!/usr/bin/env python3
"""The Responses API (POST /v1/responses), which the gateway allows beside
completions and chat.

    OPENAI_BASE_URL=https://vllm.example.internal/v1 OPENAI_API_KEY=... python examples/responses.py
"""
from fleet import client, model

api = client()
response = api.responses.create(model=model(api), input="Name three primary colours.", max_output_tokens=32)
print(f"responses: {response.output_text!r} (status={response.status}, {response.usage.output_tokens} tokens)")
