"""`make console`: a page in the browser to try the served models, see their explanations drawn and
compare a model with its variants (docs/console.md).

It serves the static page in console/ on loopback (127.0.0.1:8090 by default, `--port 0` for a free
one), the model list it reads from the model store (scripts/model_store.py: each archive's name,
version, modality, runtime, labels and the model it is a variant of, all from its own model.json),
and forwards the page's inference calls to TorchServe, same-origin. It prints the page's URL with
the inference key in the fragment (`#key=...`): a fragment never leaves the browser, and the key is
written into no file this serves.

Why a same-origin proxy and not TorchServe's CORS settings (measured on TorchServe 0.12, with
cors_allowed_origin, cors_allowed_methods and cors_allowed_headers set, curl and Chromium 156):
- token authorization answers the browser's preflight (an OPTIONS without Authorization: browsers
  never send credentials on it) with 400 InvalidKeyException, so Chromium blocks every call that
  carries the key: "Response to preflight request doesn't pass access control check";
- TorchServe sets no Access-Control-Expose-Headers, so even a call that passed could not read
  X-Text-Tokens, X-Text-Truncated or X-Audio-Window, which the page shows.
The proxy adds nothing unsafe: it holds no key (the page sends its own Authorization header, passed
on as it is), forwards only POST /predictions|/explanations/<model>[/<version>] for the models in
the list and GET /ping, answers only requests addressed to its own loopback host and port (a page on
another site that points its own host name at 127.0.0.1 is refused), and sends no CORS headers, so
no other origin can read its answers.
"""
import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Dict, Optional

import aiohttp
import requests
from aiohttp import web

from scripts.local_torchserve import REPO_ROOT, bearer, read_properties
from scripts.model_store import Archive, default_versions, scan

CONSOLE_DIR = REPO_ROOT / "console"
DEFAULT_PORT = 8090
# TorchServe's own default when config.properties sets none: bodies the proxy accepts are the ones it would.
TORCHSERVE_MAX_REQUEST_SIZE = 6553500
# Explanations with SmoothGrad take seconds and TorchServe answers within the model's responseTimeout;
# this only bounds a TorchServe that hangs.
UPSTREAM_TIMEOUT_S = 300
FORWARDED_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Explain-Target", "X-Explain-Method",
                             "X-Explain-Noise-Tunnel", "X-Explain-Visualize")
# TorchServe's Content-Type, x-request-id, and the handlers' X-Text-* / X-Audio-* headers.
FORWARDED_RESPONSE_HEADER = re.compile(r"^(content-type|x-.*)$", re.IGNORECASE)
INFERENCE_PATH = re.compile(r"^/(?P<route>predictions|explanations)/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?$")
SECURITY_HEADERS = {
    # Everything the page loads is its own: scripts, styles, the audio worklet; images and sounds the
    # user picks are blob: URLs; it calls nothing but this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def model_entry(archive: Archive, default_version: str) -> dict:
    """What the page needs to know about one archive, from its own files (model_store.read_archive)."""
    entry = {"name": archive.model, "version": archive.version, "default": archive.version == default_version}
    if archive.kind is None:  # not made by archive.sh: the page cannot tell what input it takes
        return {**entry, "modality": None}
    spec = archive.spec or {}
    return {
        **entry,
        "modality": archive.kind.modality,
        "runtime": archive.kind.runtime,
        "explainable": archive.kind.explainable,
        "variant_of": archive.variant_of,
        "quantization": ((spec.get("onnx") or {}).get("quantization") or {}).get("format"),
        "labels": list(archive.labels),
        # Image: the resize and centre crop, to lay the attribution grid over the part of the picture the
        # model saw. Audio: the sample rate and window.
        "preprocess": spec.get("preprocess", {}),
    }


def model_list(model_store: Path) -> dict:
    archives, problems = scan(model_store)
    defaults = default_versions(archives)
    return {"model_store": str(model_store), "models": [model_entry(a, defaults[a.model]) for a in archives],
            "problems": problems}


def json_error(status: int, error_type: str, message: str) -> web.Response:
    """An error in the form TorchServe and the handlers answer theirs, so the page shows all of them alike."""
    return web.json_response({"code": status, "type": error_type, "message": message}, status=status)


class Console:
    def __init__(self, console_dir: Path, inference_url: str, model_store: Path, max_request_bytes: int):
        self.console_dir = Path(console_dir)
        self.inference_url = inference_url.rstrip("/")
        self.model_store = Path(model_store)
        self.max_request_bytes = max_request_bytes
        # The page's files, listed and read once: nothing else under any path is served, and no request
        # waits on the disk in the event loop that also forwards the inference calls.
        self.files = {path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix]) for path in self.console_dir.iterdir()
                      if path.is_file() and path.suffix in CONTENT_TYPES}
        self.session: Optional[aiohttp.ClientSession] = None
        self.listed = self.read_models()

    def read_models(self) -> dict:
        listed = model_list(self.model_store)
        # name → versions of every archive listed: the only models the proxy forwards to.
        self.forwarded: Dict[str, set] = {}
        for model in listed["models"]:
            self.forwarded.setdefault(model["name"], set()).add(model["version"])
        return listed

    def app(self) -> web.Application:
        # A body over TorchServe's max_request_size would be refused by it: refuse it here, in its words.
        app = web.Application(client_max_size=self.max_request_bytes, middlewares=[self.own_host_only])
        app.router.add_get("/", self.page_file)
        app.router.add_get("/models.json", self.models)
        app.router.add_get("/ping", self.forward)
        app.router.add_post("/predictions/{tail:.+}", self.forward)
        app.router.add_post("/explanations/{tail:.+}", self.forward)
        app.router.add_get("/{name}", self.page_file)
        app.on_startup.append(self.open_session)
        app.on_cleanup.append(self.close_session)
        return app

    async def open_session(self, app):
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S))

    async def close_session(self, app):
        await self.session.close()

    @web.middleware
    async def own_host_only(self, request: web.Request, handler):
        """Only requests addressed to this server's own loopback address and port: a page on another site
        that re-points its host name at 127.0.0.1 (DNS rebinding) sends its own name as Host."""
        port = request.transport.get_extra_info("sockname")[1] if request.transport else None
        if request.host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return json_error(421, "MisdirectedRequest", f"this console answers only http://127.0.0.1:{port}/, "
                                                         f"not Host {request.host!r}")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def page_file(self, request: web.Request) -> web.StreamResponse:
        page_file = self.files.get(request.match_info.get("name", "index.html"))
        if page_file is None:
            return json_error(404, "NotFound", f"no such file: {request.path}")
        body, content_type = page_file
        return web.Response(body=body, content_type=None, headers={"Content-Type": content_type})

    async def models(self, request: web.Request) -> web.Response:
        # Read again at each load of the page: an archive rebuilt or added since shows up on reload.
        return web.json_response(self.read_models())

    async def forward(self, request: web.Request) -> web.Response:
        if request.path != "/ping":
            match = INFERENCE_PATH.match(request.path)
            versions = self.forwarded.get(match["model"], set()) if match else set()
            if not versions or (match["version"] is not None and match["version"] not in versions):
                return json_error(404, "ModelNotListed", f"{request.path} is not a model in {self.model_store}; "
                                                         "the console forwards only to those (reload the page)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "RequestTooLarge", f"the request is over TorchServe's max_request_size "
                                                      f"({self.max_request_bytes} bytes)")
        headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
        url = self.inference_url + request.path
        try:
            async with self.session.request(request.method, url, data=body if body else None, headers=headers) as upstream:
                content = await upstream.read()
                passed = {name: value for name, value in upstream.headers.items() if FORWARDED_RESPONSE_HEADER.match(name)}
                return web.Response(status=upstream.status, body=content, headers=passed)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return json_error(502, "TorchServeUnreachable", f"TorchServe at {self.inference_url} did not answer "
                                                            f"({type(error).__name__}: {error}); is it running? (make serve)")


def inference_key(key_file: Path) -> Optional[str]:
    try:
        return json.loads(Path(key_file).read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def server_check(inference_url: str, key: Optional[str]) -> Optional[str]:
    """Why the page will not work yet (TorchServe down, the key refused); None when it answers /ping."""
    try:
        response = requests.get(f"{inference_url}/ping", headers=bearer(key), timeout=10)
    except requests.RequestException as error:
        return f"TorchServe at {inference_url} does not answer ({type(error).__name__}); start it with: make serve"
    if response.ok:
        return None
    return f"TorchServe at {inference_url} answers /ping with {response.status_code}: {response.text.strip()}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the console page for a running TorchServe (make console).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.properties",
                        help="TorchServe's config.properties: its inference address, model store and max_request_size")
    parser.add_argument("--inference-url", help="TorchServe's inference API (default: the config's inference_address)")
    parser.add_argument("--model-store", type=Path, help="the archives to list (default: the config's model_store)")
    parser.add_argument("--key-file", type=Path, default=REPO_ROOT / "key_file.json",
                        help="TorchServe's key_file.json, for the URL printed (the page is never served the key)")
    return parser


async def serve(console: Console, port: int, on_started) -> None:
    runner = web.AppRunner(console.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        sys.exit(f"console: cannot listen on 127.0.0.1:{port} ({error.strerror}); pick another port: "
                 f"make console CONSOLE_PORT=0 (a free one) or CONSOLE_PORT=<port>")
    on_started(runner.addresses[0][1])
    try:
        await asyncio.Event().wait()  # until Ctrl+C or SIGTERM
    finally:
        await runner.cleanup()


def main(args: argparse.Namespace) -> None:
    properties = read_properties(args.config)
    inference_url = args.inference_url or properties["inference_address"]
    model_store = args.model_store or (args.config.parent / properties.get("model_store", "model_store"))
    key = inference_key(args.key_file)
    max_request_bytes = int(properties.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE))
    console = Console(CONSOLE_DIR, inference_url, model_store, max_request_bytes)
    listed = console.listed
    for problem in listed["problems"]:
        print(f"console: skipping {problem}", file=sys.stderr)
    if not listed["models"]:
        sys.exit(f"console: no archives in {model_store}; make serve builds them")

    def started(port: int) -> None:
        names = sorted({model["name"] for model in listed["models"]})
        print(f"console: {len(names)} models from {model_store} ({', '.join(names)}), calling TorchServe at {inference_url}")
        problem = server_check(inference_url, key)
        if problem:
            print(f"console: {problem}", file=sys.stderr)
        if key is None:
            print(f"console: no inference key in {args.key_file}: paste one into the page")
        print(f"console: open http://127.0.0.1:{port}/{f'#key={key}' if key else ''}")
        print("console: Ctrl+C stops it", flush=True)

    try:
        asyncio.run(serve(console, args.port, started))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(get_args_parser().parse_args())
