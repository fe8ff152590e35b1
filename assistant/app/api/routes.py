"""REST API (FastAPI), mounted beside the Gradio UI by `inkloop serve`.

Every route is a thin shell over `Services`: validation errors become 4xx JSON answers of the form
``{"error": "<what is wrong>", "detail": ...}`` and nothing is written. Every field is bounded (ids
to SQLite's int64, lists and strings by length), bodies by `ServeLimits.max_body_bytes` as they
arrive. Suggestions pass the generation gate (`assistant.app.limits`: 1 generating + a few waiting,
the rest 429 with Retry-After) and run on their own small thread pool, never on the threadpool the
cheap routes (plain ``def``) share, so /feedback and /status keep answering while the model works;
each generation has a time limit, and a dropped /suggest/stream stops its generation.
Other areas add their own routers with ``build_api(services, extra_routers=[...])``.

The OpenAPI schema is at ``/openapi.json`` (interactive docs at ``/docs``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, Sequence

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.app.api.security import AccessGuard, AccessSettings, BodyLimit
from assistant.app.limits import Busy, Cancelled, ServeLimits
from assistant.app.services import InputError, Services, SuggestRequest
from assistant.lm.config import (
    BUILTIN_STYLES,
    INSPIRE_KINDS,
    MAX_DRAW,
    MAX_K,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_NEW_TOKENS,
    MAX_SAMPLE_CHARS,
    MAX_TEXT_CHARS,
    MODES,
)
from assistant.lm.library import MAX_SNIPPET_CHARS
from assistant.lm.prompts import STYLE_INSTRUCTIONS
from storage.records import FEEDBACK_KINDS, NotFound, StoreError, as_dict

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = ServeLimits.max_body_bytes
"""Request bodies larger than this are refused (413), counted as they arrive."""
MAX_ID = 2**63 - 1
"""Ids are SQLite integers (int64): anything larger cannot name a row."""

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Keyword = Annotated[str, Field(max_length=MAX_KEYWORD_CHARS)]

Mode = Literal["continue", "restyle", "inspire"]
InspireKind = Literal["ideas", "openings", "outline"]
FeedbackKind = Literal["thumb", "stars", "best", "rank", "edit", "accept"]
assert set(MODES) == set(Mode.__args__) and set(INSPIRE_KINDS) == set(InspireKind.__args__)
assert set(FEEDBACK_KINDS) == set(FeedbackKind.__args__)

Profile = Field(None, min_length=1, max_length=64, description="Profile id (default: the server's profile).")


# ----------------------------------------------------------------------------- schemas
class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SuggestIn(_In):
    """One request for K candidate suggestions."""

    mode: Mode = Field(description="continue: write on from the draft; restyle: rewrite it; inspire: ideas from keywords.")
    text: str = Field("", max_length=MAX_TEXT_CHARS,
                      description=f"The draft (continue/restyle) or a theme (inspire); at most {MAX_TEXT_CHARS} characters.")
    style: str | None = Field(None, max_length=40, description=(
        f"restyle: one of {', '.join(BUILTIN_STYLES)}, a style you defined (POST /styles), "
        "or 'sample' to imitate `sample`."))
    sample: str | None = Field(None, max_length=MAX_SAMPLE_CHARS,
                               description="restyle: a text whose voice to imitate (style 'sample').")
    keywords: Annotated[list[Keyword], Field(max_length=MAX_KEYWORDS)] | Annotated[
        str, Field(max_length=MAX_KEYWORDS * (MAX_KEYWORD_CHARS + 2))] | None = Field(None, description=(
            f"inspire: keywords, as a list or comma-separated; at most {MAX_KEYWORDS} of at most "
            f"{MAX_KEYWORD_CHARS} characters each."))
    inspire_kind: InspireKind = Field("ideas", description="inspire: story ideas, opening lines, or an outline.")
    k: int = Field(3, ge=1, le=MAX_K, description=f"Number of candidates (1..{MAX_K}).")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="Upper bound on tokens per candidate.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")
    profile: str | None = Profile
    document_id: Id | None = Field(None, description="The draft this request belongs to, if saved.")
    variety: bool = Field(False, description=(
        "continue/inspire: write the candidates from different angles (as asked, sensory detail, brevity, "
        "warm tone, surprise) rather than K samples of one prompt."))
    draw: int | None = Field(None, ge=1, le=MAX_DRAW, description=(
        "Reward-guided choice: candidates drawn to choose the K shown from (default: the server's setting). "
        "Only used once the profile has a reward model."))
    choice: bool | None = Field(None, description=(
        "Reward-guided choice on or off for this request (default: on once the profile has a reward model)."))


class SuggestionOut(BaseModel):
    id: int = Field(description="Suggestion id: rate it with POST /feedback.")
    text: str
    angle: str | None = Field(None, description="With variety: the angle this candidate was written from.")
    score: float | None = Field(None, description=(
        "With reward-guided choice: the reward model's conservative score (ensemble mean - kappa * spread)."))
    exploration: bool | None = Field(None, description=(
        "With reward-guided choice: true for the exploration slot (shown to learn, not because it scored best)."))


class SuggestOut(BaseModel):
    request_id: int
    policy_version: int = Field(description="Policy version that produced the candidates (0 = base model).")
    suggestions: list[SuggestionOut]
    material: list[dict[str, Any]] = Field(description="Library snippets used as material (inspire mode).")
    seconds: float = Field(description="Server-side wall time of the request.")
    choice: dict[str, Any] | None = Field(None, description=(
        "With reward-guided choice: reward_version, draw (N asked), drawn (distinct candidates), kappa, "
        "explore, members; null when the K shown were all that was drawn."))


class FeedbackIn(_In):
    """One rating of one suggestion."""

    suggestion_id: Id = Field(description="The suggestion rated.")
    kind: FeedbackKind = Field(description=(
        "thumb (value +1/-1), stars (value 1..5), best (no value), rank (ranking: ids of one request, best "
        "first), edit (edited_text: your improved version), accept (it went into the draft)."))
    value: float | None = Field(None, ge=-1e6, le=1e6,
                                description="thumb: +1 or -1; stars: an integer 1..5; accept: optional.")
    edited_text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="edit: the improved text.")
    ranking: list[Id] | None = Field(None, max_length=MAX_K, description="rank: suggestion ids, best first.")


class FeedbackOut(BaseModel):
    feedback_id: int


class SnippetIn(_In):
    text: str = Field(min_length=1, max_length=MAX_SNIPPET_CHARS, description="A note or passage for your library.")
    profile: str | None = Profile


class IdOut(BaseModel):
    id: int


class StyleIn(_In):
    name: str = Field(min_length=1, max_length=40, description="Style name, used as `style` in restyle requests.")
    description: str = Field(min_length=1, max_length=2000, description="How text in this style reads.")
    profile: str | None = Profile


class StyleOut(BaseModel):
    name: str
    description: str
    builtin: bool = False


class StylesOut(BaseModel):
    styles: list[StyleOut]


class StatusOut(BaseModel):
    model: str = Field(description="Base model name.")
    profile: str = Field(description="The profile this status is of (the `profile` query, else the server's).")
    policy_version: int = Field(description="Live (published) policy version of the profile; 0 = base model.")
    loaded_policy_version: int = Field(description=(
        "Policy version that served the profile's last suggestion (0: the base model, or none yet); "
        "the generator switches to the live one before the next."))
    reward_version: int = Field(description="Live reward model version of the profile (what the reward-guided "
                                            "choice scores with); 0 = none yet.")
    policy_error: str | None = Field(None, description=(
        "Why the live version is not the loaded one (it could not be loaded; the generator kept the "
        "last loadable version or the base model), or null."))
    counts: dict[str, int]
    feedback_by_kind: dict[str, int]
    learner: dict[str, Any] | None = Field(description="The profile's learner state, or null when it has never run.")


# ----------------------------------------------------------------------------- errors
def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(jsonable_encoder(body), status_code=status)


def scrub_paths(message: str, data_dir: str | os.PathLike | None) -> str:
    """`message` with the data directory's absolute path made relative (and the home folder as ~):
    answers never tell a client where things are on this machine."""
    if data_dir:
        for root in {str(pathlib.Path(data_dir)), str(pathlib.Path(data_dir).resolve())}:
            message = message.replace(root + os.sep, "").replace(root, "<data dir>")
    home = str(pathlib.Path.home())
    if len(home) > 1:
        message = message.replace(home + os.sep, "~" + os.sep)
    return message


def _scrubbed(request: Request, exc: Exception) -> str:
    return scrub_paths(str(exc), getattr(request.app.state, "data_dir", None))


def _validation_message(errors: Sequence[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            parts.append(f"the request body is not valid JSON ({ctx.get('error', e.get('msg'))})")
        else:
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k != "input"} for e in exc.errors()]
        return _error(422, _validation_message(errors), errors)

    @app.exception_handler(InputError)
    async def _on_input(request: Request, exc: InputError):
        return _error(400, _scrubbed(request, exc))

    @app.exception_handler(NotFound)
    async def _on_not_found(request: Request, exc: NotFound):
        return _error(404, _scrubbed(request, exc))

    @app.exception_handler(StoreError)
    async def _on_store(request: Request, exc: StoreError):
        return _error(400, _scrubbed(request, exc))

    @app.exception_handler(Busy)
    async def _on_busy(request: Request, exc: Busy):
        r = _error(exc.status, str(exc))
        r.headers["Retry-After"] = str(int(exc.retry_after))
        return r

    @app.exception_handler(Cancelled)
    async def _on_cancelled(request: Request, exc: Cancelled):
        return _error(409, str(exc))

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception):
        # the traceback goes to the log; the answer names no file, path or internal detail
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error (the server log has the details)")

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and "parsing the body" in msg:
            msg = "the request body could not be read: send UTF-8 encoded JSON"
        return _error(exc.status_code, msg)


# ----------------------------------------------------------------------------- routes
class _CancellingStream(StreamingResponse):
    """A StreamingResponse that calls `on_close` however it ends (done, or the client went away)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def api_router(services: Services, generation_pool: ThreadPoolExecutor | None = None) -> APIRouter:
    """The /api/v1 routes. Suggestions run on `generation_pool` (made here when not given)."""
    r = APIRouter(prefix=API_PREFIX, tags=["inkloop"])
    if generation_pool is None:
        generation_pool = ThreadPoolExecutor(services.gate.capacity, thread_name_prefix="inkloop-generate")

    def _request(body: SuggestIn) -> SuggestRequest:
        return SuggestRequest(**body.model_dump(exclude={"profile"}), profile=body.profile or services.default_profile)

    async def _check_document(body: SuggestIn) -> None:
        if body.document_id is not None:  # 404 before any work if it does not exist
            await run_in_threadpool(services.store.get_document, body.document_id)

    @r.post("/suggest", response_model=SuggestOut, summary="K candidate suggestions for a draft",
            responses={429: {"description": "The model is busy (queue full): retry after Retry-After seconds."}})
    async def suggest(body: SuggestIn) -> dict[str, Any]:
        req = _request(body)
        await _check_document(body)
        ticket = services.gate.admit()  # Busy -> 429 at once, before any thread is taken
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(generation_pool, services.suggest, req, ticket)
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        return res.to_dict()

    @r.post(
        "/suggest/stream",
        summary="Like /suggest, streamed as NDJSON while the model writes",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}, "description": (
            'One JSON object per line: {"done": false, "partial": []} once the input is accepted, '
            '{"done": false, "partial": [texts so far]} while generating, then {"done": true, ...the '
            '/suggest answer}. Bad input is a 4xx JSON error before streaming starts; closing the '
            'connection stops the generation and records nothing.')},
            429: {"description": "The model is busy (queue full): retry after Retry-After seconds."}},
    )
    async def suggest_stream(body: SuggestIn) -> StreamingResponse:
        req = _request(body)
        await _check_document(body)
        ticket = services.gate.admit()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def push(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(q.put_nowait, item)

        def work() -> None:
            try:
                push(("done", services.suggest(req, ticket, on_update=lambda p: push(("partial", list(p))))))
            except BaseException as e:  # noqa: BLE001 - surfaced below, as a 4xx or a last line
                push(("error", e))

        loop.run_in_executor(generation_pool, work)
        try:
            first = await q.get()  # validation happens first: InputError becomes a 4xx, not a broken stream
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        if first[0] == "error":
            raise first[1]

        async def lines():
            item = first
            while True:
                kind, value = item
                if kind == "partial":
                    yield json.dumps({"done": False, "partial": value}, ensure_ascii=False) + "\n"
                elif kind == "done":
                    yield json.dumps({"done": True, **value.to_dict()}, ensure_ascii=False) + "\n"
                    return
                else:
                    msg = str(value) if isinstance(value, (InputError, StoreError)) else "generation failed"
                    if not isinstance(value, (InputError, StoreError, Cancelled)):
                        log.error("streamed suggestion failed", exc_info=value)
                    yield json.dumps({"done": True, "error": msg}, ensure_ascii=False) + "\n"
                    return
                item = await q.get()

        return _CancellingStream(lines(), ticket.cancel, media_type="application/x-ndjson")

    @r.post("/feedback", response_model=FeedbackOut, summary="Rate a suggestion")
    def feedback(body: FeedbackIn) -> dict[str, Any]:
        fid = services.feedback(body.suggestion_id, body.kind, body.value, body.edited_text, body.ranking, source="api")
        return {"feedback_id": fid}

    @r.get("/status", response_model=StatusOut,
           summary="A profile's live policy and reward versions, counts, learner state")
    def status(profile: str | None = Query(None, min_length=1, max_length=64)) -> dict[str, Any]:
        return services.status(profile)

    @r.post("/library", response_model=IdOut, summary="Add a snippet to your library")
    def add_snippet(body: SnippetIn) -> dict[str, Any]:
        return {"id": services.add_snippet(body.text, body.profile, source="api")}

    @r.get("/library", summary="Search your library by meaning")
    def search_library(
        query: str = Query("", max_length=MAX_TEXT_CHARS, description="What to look for; empty lists nothing."),
        profile: str | None = Query(None, min_length=1, max_length=64),
        top_k: int = Query(5, ge=1, le=50),
    ) -> dict[str, Any]:
        return {"results": services.search_library(query, profile, top_k)}

    @r.post("/styles", response_model=StyleOut, summary="Define (or redefine) a style for restyle mode")
    def save_style(body: StyleIn) -> dict[str, Any]:
        services.save_style(body.name, body.description, body.profile)
        return {"name": body.name.strip(), "description": body.description.strip(), "builtin": False}

    @r.get("/styles", response_model=StylesOut, summary="Built-in and defined styles")
    def list_styles(profile: str | None = Query(None, min_length=1, max_length=64)) -> dict[str, Any]:

        builtin = [{"name": n, "description": STYLE_INSTRUCTIONS[n], "builtin": True} for n in BUILTIN_STYLES]
        custom = services.store.styles(profile or services.default_profile)
        return {"styles": builtin + [{"name": n, "description": d, "builtin": False} for n, d in custom.items()]}

    @r.get("/requests", summary="Recent requests with their suggestions")
    def recent_requests(
        profile: str | None = Query(None, min_length=1, max_length=64),
        limit: int = Query(20, ge=1, le=200),
    ) -> dict[str, Any]:
        reqs = services.store.recent_requests(profile or services.default_profile, limit=limit)
        return {"requests": [as_dict(q) for q in reqs]}

    @r.get("/requests/{request_id}", summary="One request with its suggestions and their feedback")
    def get_request(request_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        req = services.store.get_request(request_id)
        fb = [as_dict(f) for f in services.store.feedback(req.profile_id, request_id=request_id)]
        return {**as_dict(req), "feedback": fb}

    return r


def build_api(services: Services, extra_routers: Sequence[APIRouter] = (),
              access: AccessSettings | None = None) -> FastAPI:
    """The FastAPI app with inkloop's routes (plus any `extra_routers` other areas provide).

    `access` (what `inkloop serve` always passes) turns on the Host/Origin checks and, with a token,
    the bearer/cookie check for every route, the mounted UI included (assistant.app.api.security);
    without it (tests, embedding) every caller is let in. The body limit is always on."""
    app = FastAPI(
        title="inkloop",
        version="1",
        description="A writing assistant that learns from your ratings. Errors are JSON: {\"error\": message}.",
    )
    app.add_middleware(BodyLimit, max_bytes=services.limits.max_body_bytes)
    if access is not None:
        app.add_middleware(AccessGuard, settings=access)  # added last = outermost: checked first

    install_error_handlers(app)
    pool = ThreadPoolExecutor(services.gate.capacity, thread_name_prefix="inkloop-generate")
    app.state.generation_pool = pool
    app.include_router(api_router(services, pool))
    for router in extra_routers:
        app.include_router(router)
    app.state.services = services
    app.state.data_dir = services.store.path.parent
    return app


def dumps(obj: Any) -> str:
    """JSON for CLI output, matching what the API returns."""
    return json.dumps(jsonable_encoder(obj), ensure_ascii=False, indent=2)
