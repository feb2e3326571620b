#!/usr/bin/env python3
"""One completion and one chat through the gateway.

    OPENAI_BASE_URL=https://vllm.example.internal/v1 OPENAI_API_KEY=... python examples/complete_and_chat.py
"""
from fleet import client, model

api = client()
name = model(api)

completion = api.completions.create(model=name, prompt="The capital of France is", max_tokens=16)
print(f"completion: {completion.choices[0].text!r} ({completion.usage.completion_tokens} tokens)")

chat = api.chat.completions.create(
    model=name,
    messages=[{"role": "system", "content": "You answer in one short sentence."},
              {"role": "user", "content": "What is a GPU?"}],
    max_tokens=32,
)
print(f"chat: {chat.choices[0].message.content!r} ({chat.usage.completion_tokens} tokens, "
      f"finish_reason={chat.choices[0].finish_reason})")
