#!/usr/bin/env python3
"""N concurrent streaming clients against an OpenAI-compatible /v1/completions endpoint.

Standard library only (asyncio streams, HTTP/1.1 with chunked transfer decoding, SSE parsing), so it
runs on a fresh machine with no pip install. Each client sends its own prompt of random token ids
(distinct per client, so no prefix cache helps) or, with --prompt-files, the files' texts round robin,
`max_tokens` = --gen, `ignore_eos`, greedy, `stream`.

Measured per client: TTFT = first streamed text event - request sent; inter-token latency = gaps
between consecutive text events (a server that skips empty-text tokens, such as partial UTF-8 bytes,
folds them into the next gap); completion tokens from `usage` (stream_options.include_usage) or
llama-server's `timings.predicted_n`, else the number of text events.

Printed (and written as JSON with --json): total output tokens/s over the wall time of the run,
"decode tokens/s" = the sum over clients of (tokens - 1) / (last event - first event), TTFT and ITL
p50/p99 in ms. The whole run is bounded by --timeout seconds; unfinished clients are reported.

  serve_client.py --url http://127.0.0.1:8080 --clients 16 --prompt 128 --gen 128 [--json out.json]
"""
import argparse
import asyncio
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def read_chunked(reader):
    """Yields the body of a chunked HTTP/1.1 response piece by piece."""
    while True:
        line = await reader.readline()
        if not line:
            return
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def one_client(i, host, port, body, res, t_start):
    r = {"client": i, "ok": False, "events": [], "tokens": None, "error": None}
    res[i] = r
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        payload = json.dumps(body).encode()
        req = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode() + payload
        await t_start.wait()
        r["sent"] = time.perf_counter()
        writer.write(req)
        await writer.drain()
        status = await reader.readline()
        headers = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        code = int(status.split()[1])
        if code != 200:
            r["error"] = f"HTTP {code}: {(await reader.read(500)).decode(errors='replace')}"
            return
        if "chunked" in headers.get("transfer-encoding", ""):
            pieces = read_chunked(reader)
        else:
            async def raw():
                while True:
                    d = await reader.read(65536)
                    if not d:
                        return
                    yield d
            pieces = raw()
        buf = b""
        async for piece in pieces:
            now = time.perf_counter()
            buf += piece
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    r["ok"] = True
                    continue
                ev = json.loads(data)
                if ev.get("usage") and ev["usage"].get("completion_tokens") is not None:
                    r["tokens"] = ev["usage"]["completion_tokens"]
                elif ev.get("timings", {}).get("predicted_n") is not None and r["tokens"] is None:
                    r["tokens"] = ev["timings"]["predicted_n"]
                ch = ev.get("choices") or []
                if ch and ch[0].get("text"):
                    r["events"].append(now)
                if ch and ch[0].get("finish_reason"):
                    r["finish"] = ch[0]["finish_reason"]
        r["ok"] = r["ok"] or bool(r.get("finish"))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        r["error"] = f"{type(e).__name__}: {e}"
    finally:
        r["end"] = time.perf_counter()
        if writer is not None:
            writer.close()


def wait_health(url, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as f:
                if f.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    return False


def served_model(url):
    """The first model the server lists at /v1/models ("m" if it lists none)."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as f:
            data = json.loads(f.read()).get("data") or []
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return "m"
    return data[0].get("id", "m") if data else "m"


def warmup(url, model, vocab_lo, vocab_hi):
    body = {"model": model, "prompt": [vocab_lo + k for k in range(8)], "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as f:
        f.read()


async def run(a):
    u = urllib.parse.urlparse(a.url)
    rng = random.Random(a.seed)
    if a.prompt_files:
        # Text prompts, round robin over the files (grounded workloads: speculative decoding by lookup).
        texts = [open(f).read() for f in a.prompt_files]
        prompts = [texts[i % len(texts)] for i in range(a.clients)]
    else:
        prompts = [[rng.randrange(a.vocab_lo, a.vocab_hi) for _ in range(a.prompt)] for _ in range(a.clients)]
    res = [None] * a.clients
    t_start = asyncio.Event()
    tasks = []
    for i in range(a.clients):
        body = {
            "model": a.model, "prompt": prompts[i], "max_tokens": a.gen, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
        }
        tasks.append(asyncio.create_task(one_client(i, u.hostname, u.port, body, res, t_start)))
    await asyncio.sleep(0.2)  # all connections open
    t0 = time.perf_counter()
    t_start.set()
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    t1 = time.perf_counter()
    return t0, t1, res, len(pending)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", help="model name to send (default: the first of the server's /v1/models; bushu "
                    "serve answers 404 to a name it does not serve)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per client")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens per client")
    ap.add_argument("--prompt-files", nargs="*", help="text prompts (round robin) instead of random token ids")
    ap.add_argument("--vocab-lo", type=int, default=1000)
    ap.add_argument("--vocab-hi", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="bound on the whole run, seconds")
    ap.add_argument("--health-timeout", type=float, default=180)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not wait_health(a.url, a.health_timeout):
        sys.exit(f"{a.url}/health not ready after {a.health_timeout}s")
    if a.model is None:
        a.model = served_model(a.url)
    warmup(a.url, a.model, a.vocab_lo, a.vocab_hi)
    t0, t1, res, unfinished = asyncio.run(run(a))
    ttft, itl, decode_rates, toks, errors = [], [], [], 0, []
    for r in res:
        if r is None:
            continue
        if r["error"]:
            errors.append(r["error"])
        ev = r["events"]
        n = r["tokens"] if r["tokens"] is not None else len(ev)
        toks += n if r["ok"] else len(ev)
        if ev:
            ttft.append(ev[0] - r["sent"])
            itl += [b - c for c, b in zip(ev, ev[1:])]
            if len(ev) > 1 and ev[-1] > ev[0]:
                decode_rates.append((n - 1) / (ev[-1] - ev[0]))
    wall = t1 - t0
    out = {
        "label": a.label, "clients": a.clients, "prompt": a.prompt, "gen": a.gen,
        "completed": sum(1 for r in res if r and r["ok"]), "unfinished": unfinished, "errors": errors[:5],
        "wall_s": wall, "output_tokens": toks, "total_tps": toks / wall if wall else 0.0,
        "decode_tps": sum(decode_rates),
        "ttft_p50_ms": pct(ttft, 50) * 1e3, "ttft_p99_ms": pct(ttft, 99) * 1e3,
        "itl_p50_ms": pct(itl, 50) * 1e3, "itl_p99_ms": pct(itl, 99) * 1e3,
    }
    print(f"{a.label or a.url}: {out['completed']}/{a.clients} done in {wall:.1f}s, {toks} tokens, "
          f"total {out['total_tps']:.1f} t/s, decode {out['decode_tps']:.1f} t/s, "
          f"TTFT p50 {out['ttft_p50_ms']:.0f} p99 {out['ttft_p99_ms']:.0f} ms, "
          f"ITL p50 {out['itl_p50_ms']:.0f} p99 {out['itl_p99_ms']:.0f} ms"
          + (f", errors: {errors[:2]}" if errors else ""), file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
