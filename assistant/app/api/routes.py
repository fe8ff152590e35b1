"""REST API (FastAPI), mounted beside the Gradio UI by `inkloop serve`.

Every route is a thin shell over `Services`: validation errors become 4xx JSON answers of the form
``{"error": "<what is wrong>", "detail": ...}`` and nothing is written; generation runs in
FastAPI's threadpool (the routes are plain ``def``), so the server stays responsive while the
model works. Other areas add their own routers with ``build_api(services, extra_routers=[...])``.

The OpenAPI schema is at ``/openapi.json`` (interactive docs at ``/docs``).
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any, Literal, Sequence

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.app.services import InputError, Services, SuggestRequest, SuggestResponse
from assistant.lm.config import (
    BUILTIN_STYLES,
    INSPIRE_KINDS,
    MAX_DRAW,
    MAX_K,
    MAX_NEW_TOKENS,
    MAX_SAMPLE_CHARS,
    MAX_TEXT_CHARS,
    MODES,
)
from assistant.lm.library import MAX_SNIPPET_CHARS
from storage.store import FEEDBACK_KINDS, NotFound, StoreError, as_dict

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 1_000_000
"""Request bodies larger than this are refused (413) before they are parsed."""

Mode = Literal["continue", "restyle", "inspire"]
InspireKind = Literal["ideas", "openings", "outline"]
FeedbackKind = Literal["thumb", "stars", "best", "rank", "edit", "accept"]
assert set(MODES) == set(Mode.__args__) and set(INSPIRE_KINDS) == set(InspireKind.__args__)
assert set(FEEDBACK_KINDS) == set(FeedbackKind.__args__)

Profile = Field(None, min_length=1, max_length=64, description="Profile id (default: the server's profile).")


# ----------------------------------------------------------------------------- schemas
class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    keywords: list[str] | str | None = Field(None, description="inspire: keywords, as a list or comma-separated.")
    inspire_kind: InspireKind = Field("ideas", description="inspire: story ideas, opening lines, or an outline.")
    k: int = Field(3, ge=1, le=MAX_K, description=f"Number of candidates (1..{MAX_K}).")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="Upper bound on tokens per candidate.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")
    profile: str | None = Profile
    document_id: int | None = Field(None, description="The draft this request belongs to, if saved.")
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

    suggestion_id: int = Field(description="The suggestion rated.")
    kind: FeedbackKind = Field(description=(
        "thumb (value +1/-1), stars (value 1..5), best (no value), rank (ranking: ids of one request, best "
        "first), edit (edited_text: your improved version), accept (it went into the draft)."))
    value: float | None = Field(None, description="thumb: +1 or -1; stars: an integer 1..5; accept: optional.")
    edited_text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="edit: the improved text.")
    ranking: list[int] | None = Field(None, max_length=MAX_K, description="rank: suggestion ids, best first.")


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
    policy_version: int = Field(description="Live (published) policy version of the profile; 0 = base model.")
    loaded_policy_version: int = Field(description="Policy version the generator has loaded right now.")
    counts: dict[str, int]
    feedback_by_kind: dict[str, int]
    learner: dict[str, Any] | None = Field(description="The learner's state, or null when it has never run.")


# ----------------------------------------------------------------------------- errors
def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(jsonable_encoder(body), status_code=status)


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
        return _error(400, str(exc))

    @app.exception_handler(NotFound)
    async def _on_not_found(request: Request, exc: NotFound):
        return _error(404, str(exc))

    @app.exception_handler(StoreError)
    async def _on_store(request: Request, exc: StoreError):
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and "parsing the body" in msg:
            msg = "the request body could not be read: send UTF-8 encoded JSON"
        return _error(exc.status_code, msg)


# ----------------------------------------------------------------------------- routes
def api_router(services: Services) -> APIRouter:
    r = APIRouter(prefix=API_PREFIX, tags=["inkloop"])

    @r.post("/suggest", response_model=SuggestOut, summary="K candidate suggestions for a draft")
    def suggest(body: SuggestIn) -> dict[str, Any]:
        if body.document_id is not None:
            services.store.get_document(body.document_id)  # 404 before any work if it does not exist
        req = SuggestRequest(**body.model_dump(exclude={"profile"}), profile=body.profile or services.default_profile)
        return services.suggest(req).to_dict()

    @r.post(
        "/suggest/stream",
        summary="Like /suggest, streamed as NDJSON while the model writes",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}, "description": (
            'One JSON object per line: {"done": false, "partial": [texts so far]} while generating, then '
            '{"done": true, ...the /suggest answer}. Bad input is a 4xx JSON error before streaming starts.')}},
    )
    def suggest_stream(body: SuggestIn) -> StreamingResponse:
        if body.document_id is not None:
            services.store.get_document(body.document_id)
        req = SuggestRequest(**body.model_dump(exclude={"profile"}), profile=body.profile or services.default_profile)
        events = services.suggest_stream(req)
        first = next(events)  # validation happens here: InputError becomes a 4xx, not a broken stream

        def lines():
            for ev in itertools.chain([first], events):
                if isinstance(ev, SuggestResponse):
                    yield json.dumps({"done": True, **ev.to_dict()}, ensure_ascii=False) + "\n"
                else:
                    yield json.dumps({"done": False, "partial": ev}, ensure_ascii=False) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @r.post("/feedback", response_model=FeedbackOut, summary="Rate a suggestion")
    def feedback(body: FeedbackIn) -> dict[str, Any]:
        fid = services.feedback(body.suggestion_id, body.kind, body.value, body.edited_text, body.ranking, source="api")
        return {"feedback_id": fid}

    @r.get("/status", response_model=StatusOut, summary="Model, live policy version, counts, learner state")
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
        from assistant.lm.prompts import STYLE_INSTRUCTIONS

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
    def get_request(request_id: int) -> dict[str, Any]:
        req = services.store.get_request(request_id)
        fb = [as_dict(f) for f in services.store.feedback(req.profile_id, request_id=request_id)]
        return {**as_dict(req), "feedback": fb}

    return r


def build_api(services: Services, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The FastAPI app with inkloop's routes (plus any `extra_routers` other areas provide)."""
    app = FastAPI(
        title="inkloop",
        version="1",
        description="A writing assistant that learns from your ratings. Errors are JSON: {\"error\": message}.",
    )

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > MAX_BODY_BYTES
            except ValueError:
                return _error(400, "invalid Content-Length header")
            if too_big:
                return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    install_error_handlers(app)
    app.include_router(api_router(services))
    for router in extra_routers:
        app.include_router(router)
    app.state.services = services
    return app


def dumps(obj: Any) -> str:
    """JSON for CLI output, matching what the API returns."""
    return json.dumps(jsonable_encoder(obj), ensure_ascii=False, indent=2)
