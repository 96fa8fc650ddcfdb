#!/usr/bin/env python3
"""Soak client for `bushu serve` (bench/soak.sh): R streaming completions over C concurrent connections,
a fraction of them disconnecting mid-stream, bounded by --timeout seconds. Standard library only.

Each request: a random short prompt, `max_tokens` = --gen, `stream`, `ignore_eos` (so every stream is
--gen tokens long unless cut). Outcome per request:
  completed  200, a finish_reason, `data: [DONE]`, and as many text events as tokens asked for or fewer
             only when finish_reason says why;
  dropped    the client closed the connection on purpose after a few events (--disconnect);
  refused    429 (queue full: the server said so, as it should under overload);
  failed     anything else (another status, an error event, a stream cut without [DONE], a timeout).
Prints one JSON line with the counts and the wall time.

  soak.py --url http://127.0.0.1:18090 --requests 2000 --concurrency 32 --gen 16 --disconnect 0.2
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def one(url, body, disconnect_after, timeout):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status == 429:
            r.read()
            return "refused"
        if r.status != 200:
            r.read()
            return "failed"
        events, finish, done = 0, None, False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return "failed"
            for ch in chunk.get("choices", []):
                if ch.get("text"):
                    events += 1
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
            if disconnect_after is not None and events >= disconnect_after:
                c.sock.close()
                return "dropped"
        if done and finish in ("length", "stop"):
            return "completed"
        return "failed"
    except Exception:
        return "failed"
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--disconnect", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    words = "the king and queen of a castle sat by the sea where ships came in at night".split()
    rng = random.Random(a.seed)
    plan = []
    for i in range(a.requests):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
        cut = rng.randint(1, max(1, a.gen // 2)) if rng.random() < a.disconnect else None
        plan.append(({"prompt": prompt, "max_tokens": a.gen, "temperature": 0.8, "seed": i,
                      "ignore_eos": True, "stream": True}, cut))
    counts = {"completed": 0, "dropped": 0, "refused": 0, "failed": 0}
    lock = threading.Lock()
    nxt = [0]
    t0 = time.time()

    def worker():
        while time.time() - t0 < a.timeout:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(plan):
                return
            body, cut = plan[i]
            out = one(a.url, body, cut, max(1.0, a.timeout - (time.time() - t0)))
            with lock:
                counts[out] += 1

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["not_run"] = a.requests - sum(counts.values())
    counts["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
