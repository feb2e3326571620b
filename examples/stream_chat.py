#!/usr/bin/env python3
"""A chat answer streamed token by token (server-sent events through the
gateway), with the usage reported once at the end.

    OPENAI_BASE_URL=https://vllm.example.internal/v1 OPENAI_API_KEY=... python examples/stream_chat.py
"""
import sys

from fleet import client, model

api = client()
stream = api.chat.completions.create(
    model=model(api),
    messages=[{"role": "user", "content": "Write a haiku about servers."}],
    max_tokens=48,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        sys.stdout.write(chunk.choices[0].delta.content)
        sys.stdout.flush()
    if chunk.usage:
        print(f"\n[{chunk.usage.completion_tokens} tokens streamed]")
