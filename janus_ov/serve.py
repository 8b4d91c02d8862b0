"""`python -m janus_ov serve --model ID`: the OpenAI-compatible API alone, without the web UI.

    python -m janus_ov serve --model deepseek-ai/Janus-Pro-1B --port 8000 --api-key KEY
    curl http://127.0.0.1:8000/v1/models -H "Authorization: Bearer KEY"
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .resolve import DEFAULT_MODEL


def main(argv=None) -> int:
    from .memory import limit_malloc_arenas

    limit_malloc_arenas()  # first: before the loading, serving and OpenVINO threads start
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m janus_ov serve", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=env("JANUS_MODEL", DEFAULT_MODEL), metavar="ID|PATH")
    p.add_argument("--weights", default=env("JANUS_WEIGHTS", "int4"))
    p.add_argument("--device", default=env("JANUS_DEVICE", "CPU"))
    p.add_argument("--cache-dir", default=env("JANUS_OV_CACHE"))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for all interfaces")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=env("JANUS_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' [env JANUS_API_KEY]")
    p.add_argument("--allow-image-urls", action="store_true",
                   help="fetch http(s) image_url parts (size- and time-limited); off: data: URLs only")
    p.add_argument("--max-images", type=int, default=4, help="most images one request may ask for")
    p.add_argument("--kv-cache-tokens", type=int, default=16384,
                   help="the KV-cache pool all requests share, in tokens (memory grows with it)")
    args = p.parse_args(argv)

    import uvicorn

    from .errors import JanusError
    from .openai_api import create_api
    from .pipeline import JanusPipeline

    try:
        pipe = JanusPipeline.from_pretrained(args.model, weights=args.weights, device=args.device,
                                             cache_dir=args.cache_dir, progress=lambda m: print(m, flush=True),
                                             kv_cache_tokens=args.kv_cache_tokens)
    except JanusError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    api = create_api(pipe, pipe.source, api_key=args.api_key, allow_image_urls=args.allow_image_urls,
                     max_images=args.max_images)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop request runs the clean-ups, as Ctrl+C
    print(f"Serving {pipe.source} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(api, host=args.host, port=args.port, log_level="warning")
    pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
