"""The feedback web app (Starlette) and ``WebFeedback``, the FeedbackSource that serves it from a thread.

Endpoints (all behind the guard, ``hero.web.guard``):
  GET  /?token=T              sets the session cookie and redirects to /   (the URL printed by hero)
  GET  /                      the page; GET /static/app.js, /static/pairs.js, /static/style.css
  GET  /api/state             {phase: judging|learning|done, round, prompt, n_images, image_ids, progress, ...}
  GET  /api/image/{r}/{i}     PNG of image i of the waiting round r (ints only, checked against the round)
  GET  /api/best/{r}          PNG of the current best shown beside round r
  GET  /api/best/{r}/{g}      a prompt-set round: PNG of the current best of its prompt group g
  POST /api/submit            {round, good: [indices], best: index|null}, or for a prompt-set round
                              {round, good, bests: [index|null per prompt group]}; the rules: hero.web.session
  POST /api/submit-pairs      {round, winners: [[w, l]], ties: [[i, j]]} for a pairwise (D3PO) round: hero.web.pairs

Protection: the server binds 127.0.0.1 unless configured otherwise; a Host header outside the allow-list gets
400 (DNS rebinding); every request needs the token, as the cookie set from the printed URL (401 otherwise);
a POST must be JSON from the page's own origin, scheme, host and port (403 otherwise), at most 64 kB (413),
read within 5 s (408); a request head must arrive within 5 s of connecting (408, closed); the details are
in ``hero.web.guard``. Images are looked up by (round, index): path segments of 1 to 9 ASCII digits (404
otherwise, so no over-long number ever reaches ``int``), checked against the waiting round, so nothing from a
request ever becomes a filesystem path. Every malformed request is a 4xx that changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.feedback.base import Record, RoundFeedback
from hero.prompts import group_slices
from hero.web.guard import MAX_BODY, Guard, RequestError, SlowClientProtocol, load_token, read_json
from hero.web.guard import error_response as _error
from hero.web.session import RoundSpec, Session, SubmitError

__all__ = ["MAX_BODY", "WebFeedback", "create_app", "load_token"]

STATIC = Path(__file__).parent / "static"
# Served by name lookup, never by a path from the request.
_STATIC_FILES = {"app.js": "text/javascript", "pairs.js": "text/javascript", "style.css": "text/css"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PATH_ID = re.compile(r"[0-9]{1,9}")  # round and image numbers in a URL: small, so int() never sees 4,301 digits


def path_id(value: str) -> int | None:
    """The integer of a URL segment of 1 to 9 ASCII digits, or None (the caller answers 404)."""
    return int(value) if _PATH_ID.fullmatch(value) else None


def create_app(session: Session, token: str, allowed_hosts: Iterable[str], cookie: str = "hero_token") -> Starlette:
    """The Starlette app serving ``session``, guarded by ``token`` and the Host allow-list."""

    async def index(request: Request) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC_FILES:
            return _error(404, "not found", api=False)
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_FILES[name] + "; charset=utf-8")

    async def state(request: Request) -> Response:
        return JSONResponse({**session.state(), "run_id": run_id})

    async def image(request: Request) -> Response:
        rnd, index = path_id(request.path_params["round"]), path_id(request.path_params["index"])
        path = None if rnd is None or index is None else session.image_path(rnd, index)
        if path is None:
            return _error(404, "no such image in the round waiting for feedback")
        return Response(path.read_bytes(), media_type="image/png")

    async def best(request: Request) -> Response:
        rnd = path_id(request.path_params["round"])
        group = path_id(request.path_params.get("group", "0"))
        data = None if rnd is None or group is None else session.best_png(rnd, group)
        return _error(404, "no current best for this round") if data is None else Response(data, media_type="image/png")

    async def answer(request: Request, handle) -> Response:
        try:
            payload = await read_json(request.receive)
        except RequestError as e:  # a body cut short or too big leaves bytes unread: close rather than parse them
            return _error(e.status, e.message, close=e.status in (408, 413))
        try:
            return JSONResponse(handle(payload))
        except SubmitError as e:
            return _error(e.status, e.message)

    async def submit(request: Request) -> Response:
        return await answer(request, session.submit)

    async def submit_pairs(request: Request) -> Response:
        return await answer(request, session.submit_pairs)

    run_id = hashlib.sha256(token.encode()).hexdigest()[:16]  # names the page's saved draft; reveals nothing
    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/state", state),
              Route("/api/image/{round}/{index}", image), Route("/api/best/{round}", best),
              Route("/api/best/{round}/{group}", best),
              Route("/api/submit", submit, methods=["POST"]),
              Route("/api/submit-pairs", submit_pairs, methods=["POST"])]
    app = Starlette(routes=routes)
    return Guard(app, token, cookie, allowed_hosts)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG-encode an (H, W, 3) uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _needed(record: Record | None) -> Record:
    """The web page commits a round before it answers the browser, so it needs the loop's writer of the round."""
    if record is None:
        raise ValueError("the web source records a round before it answers the browser: pass record= (the round "
                         "loop's hero.runs.RoundRecorder for this round)")
    return record


class WebFeedback:
    """FeedbackSource: serves each round in the web page and blocks until the person's submission is committed."""

    name = "web"

    def __init__(self, run_dir: str | Path, rounds_total: int, budget: int, host: str = "127.0.0.1",
                 port: int = 8765, allowed_hosts: Iterable[str] = (), mode: str = "train", prompt: str = "") -> None:
        """Prepare (not start) a server for the run in ``run_dir``; ``mode`` "train" or "label"."""
        self.session = Session(run_dir, rounds_total, budget, mode=mode, prompt=prompt)
        self.host, self.port = host, port
        self.token = load_token(run_dir)
        allowed = set(_LOOPBACK) | set(allowed_hosts)
        if host not in ("0.0.0.0", "::", ""):
            allowed.add(host)
        self._allowed = allowed
        self._server = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_config(cls, cfg) -> WebFeedback:
        """The web source of a TrainConfig (its out folder, rounds, budget and ``web`` section)."""
        return cls(cfg.out, cfg.rounds, cfg.budget, cfg.web.host, cfg.web.port, cfg.web.allowed_hosts,
                   prompt=cfg.prompt or f"{len(cfg.prompt_list)} prompts")

    @property
    def url(self) -> str:
        """The URL to open (with the token); a wildcard bind is shown as 127.0.0.1."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> str:
        """Bind the socket (errors surface here, in the caller's thread), serve in a daemon thread; return the URL."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a crash (TIME_WAIT)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self.port} ({e.strerror}); "
                          "choose another port with --set web.port=N (0: any free port)") from None
        sock.listen(512)  # room for a burst of connections, so the page's own connect is never put off
        self.port = sock.getsockname()[1]
        app = create_app(self.session, self.token, self._allowed, cookie=f"hero_token_{self.port}")
        # No limit_concurrency: it counts connections stuck before their head, so 128 of them locked the page out
        # (503); SlowClientProtocol bounds those instead (a head deadline, the oldest waiting one closed).
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http=SlowClientProtocol,
                                ws="none", timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="hero-web")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the feedback web server did not start")
            time.sleep(0.02)
        return self.url

    def alive(self) -> bool:
        """Whether the server thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def judge_round(self, round_index: int, prompt: str, images: np.ndarray, current_best: np.ndarray | None,
                    record: Record | None = None) -> RoundFeedback:
        """Show the round in the page and wait for the submission, recorded with ``record`` (the loop's writer of
        the round) before the browser is answered: in the feedback log on return."""
        self._prepare(round_index, images)
        best = None if current_best is None else png_bytes(current_best)
        spec = RoundSpec(round_index, prompt, len(images), best)
        return self.session.wait_for_feedback(spec, _needed(record), alive=self.alive)

    def judge_prompt_set(self, round_index: int, images: np.ndarray, prompts: list[str],
                         current_bests: dict[str, np.ndarray], record: Record | None = None) -> RoundFeedback:
        """A prompt-set round in one page: its images grouped by prompt (``prompts``, one per image, grouped), each
        group with its prompt and its current best; a best per prompt comes back (``RoundFeedback.bests``)."""
        self._prepare(round_index, images)
        groups = tuple((prompt, part.start, part.stop) for prompt, part in group_slices(prompts))
        pngs = tuple(None if p not in current_bests else png_bytes(current_bests[p]) for p, _, _ in groups)
        spec = RoundSpec(round_index, "", len(images), groups=groups, group_best_pngs=pngs)
        return self.session.wait_for_feedback(spec, _needed(record), alive=self.alive)

    def judge_pairs(self, round_index: int, prompt: str, images: np.ndarray, pairs: list[tuple[int, int]],
                    record: Record | None = None) -> list[tuple[int, int]]:
        """Show the round as ``pairs`` side by side; return the sorted (winner, loser) list (ties give none).

        The round is recorded with ``record`` (all its images judged: each pair is answered, a tie included)
        before the browser is answered, so it is in the feedback log on return.
        """
        self._prepare(round_index, images)
        spec = RoundSpec(round_index, prompt, len(images), pairs=tuple((int(i), int(j)) for i, j in pairs))
        return list(self.session.wait_for_feedback(spec, _needed(record), alive=self.alive).pairs)

    def _prepare(self, round_index: int, images: np.ndarray) -> None:
        """Start the server if needed and make sure the round's images are on disk, where the page reads them."""
        if self._thread is None:
            self.start()
        run = self.session.run
        for i, im in enumerate(images):  # the loop saved them already; a direct caller may not have
            if not run.image_path(round_index, i).is_file():
                run.image_path(round_index, i).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(run.image_path(round_index, i))

    def close(self, done: bool = True, linger: float = 3.0) -> None:
        """Stop the server; when ``done``, first tell the page and give it up to ``linger`` s to see that."""
        if done:
            self.session.finish()
        # Not done (a crash, Ctrl-C): the page just loses the server and keeps polling, so it picks the round up
        # again when the run is resumed.
        if self._server is not None and self._thread is not None:
            if done:
                self.session.done_seen.wait(timeout=linger)
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self.session.close()

    def __enter__(self) -> WebFeedback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(done=exc[0] is None)
