#!/usr/bin/env python3
"""Many prompts at once with bounded concurrency: at most CONCURRENCY
requests in flight, so a batch job neither trips the gateway's per-key rate
limit nor crowds out interactive users.  The SDK retries 429 and 5xx answers
(honouring Retry-After); a prompt that still fails is reported, and the
exit status says whether every prompt was answered.

    OPENAI_BASE_URL=... OPENAI_API_KEY=... python examples/batch_async.py [N_PROMPTS] [CONCURRENCY]
"""
import asyncio
import sys
import time

import openai

from fleet import async_client, client, model


async def main(n_prompts: int, concurrency: int) -> int:
    name = model(client())
    api = async_client()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with gate:
            try:
                answer = await api.completions.create(model=name, prompt=f"Fact number {i}:", max_tokens=16)
                return i, answer.usage.completion_tokens, None
            except openai.APIError as error:
                return i, 0, error

    start = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n_prompts)))
    took = time.monotonic() - start
    failed = [(i, error) for i, _, error in results if error]
    tokens = sum(n for _, n, _ in results)
    print(f"{n_prompts - len(failed)}/{n_prompts} answered, {tokens} tokens in {took:.1f} s "
          f"({tokens / took:.1f} tok/s) with at most {concurrency} in flight")
    for i, error in failed:
        print(f"prompt {i} failed: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    raise SystemExit(asyncio.run(main(*(args + [32, 4][len(args):]))))
