"""The app as a simulated person reaches it: reward.loop.simulate's Assistant over the Services facade."""

from __future__ import annotations

from typing import Any

from assistant.app.services import Services, SuggestRequest
from reward.eval.prompts import EvalPrompt
from reward.loop.simulate import Shown


class ServicesAssistant:
    """Suggestions and ratings through Services, exactly as the UI and the API call them."""

    def __init__(self, services: Services, profile: str, max_new_tokens: int, temperature: float,
                 draw: int | None = None):
        self.services, self.profile = services, profile
        self.max_new_tokens, self.temperature, self.draw = max_new_tokens, temperature, draw

    def request(self, p: EvalPrompt, k: int, seed: int | None, variety: bool = False,
                choice: bool | None = None) -> SuggestRequest:
        o = p.options
        return SuggestRequest(
            mode=p.mode, text=p.text, style=o.get("style"), sample=o.get("sample"), keywords=o.get("keywords"),
            inspire_kind=o.get("inspire_kind", "ideas"), k=k, temperature=self.temperature,
            max_new_tokens=self.max_new_tokens, seed=seed, profile=self.profile, variety=variety,
            draw=self.draw, choice=choice,
        )

    def suggest(self, prompt: EvalPrompt, k: int, seed: int | None, *, variety: bool = False,
                record: bool = True, choice: bool | None = None) -> Shown:
        req = self.request(prompt, k, seed, variety, choice)
        if not record:
            res = self.services.preview(req)
            return Shown([], list(res.texts), res.policy_version)
        resp = self.services.suggest(req)
        return Shown([s["id"] for s in resp.suggestions], [s["text"] for s in resp.suggestions], resp.policy_version)

    def feedback(self, suggestion_id: int, kind: str, value: Any = None, source: str = "simulated") -> Any:
        return self.services.feedback(suggestion_id, kind, value, source=source)
