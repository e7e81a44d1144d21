"""The model's tasks as the routes call them: checked, batched, run on the model thread.

Design decisions:
- The routes (dmlm's and the OpenAI-compatible ones) share this one object, so both kinds of
  request for a task fall into the same batches.
- What a request asks for is checked before it queues (the task was trained, the language is
  in the vocabulary, the decoding options are valid, the model has a vocoder), so a batch holds
  only items that can run and the errors name the field.
- At start the codebooks and the vocoder the tasks need are loaded (on the model thread): the
  first request is not the slow one, and a broken checkpoint fails at start, not per request.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dmlm.api import DMLM
from dmlm.decoding import SPEECH_OUT_FIELDS, USER_FIELDS, DecodingOptions, make_options
from dmlm.evaluation.s2st import WAY_TASKS
from dmlm.serve.batching import Batcher, Done
from dmlm.serve.config import ServeConfig
from dmlm.serve.media import RequestError
from dmlm.tasks import get_task, parse_spec
from dmlm.util.errors import UserError

# routes -> the trained task each needs (`speak` needs a vocoder too; `translate-speech` needs a vocoder and the
# tasks of one of its ways, `WAY_TASKS`: s2st, or s2st_chain, or s2tt and t2s)
ROUTE_TASKS = {"transcribe": "asr", "translate": "s2tt", "caption": "i2t", "synthesize-units": "t2s", "speak": "t2s",
               "translate-speech": "s2st"}


class Service:
    def __init__(self, model: DMLM, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmlm-model")
        self.batcher = Batcher(self.executor, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_pending)
        specs = [parse_spec(t) for t in model.tasks]
        self.task_names = {name for name, _ in specs}
        self.targets = [lang for name, lang in specs if name == ROUTE_TASKS["translate"] and lang]
        """Languages the model translates into."""
        self.languages = sorted({"en", *(lang for _, lang in specs if lang)})
        """Languages named by the model's tasks (the page offers these)."""
        self.ways = {way: _way_targets(specs, tasks) for way, tasks in WAY_TASKS.items()
                     if set(tasks) <= self.task_names}
        """The ways the model translates speech into speech (direct, chained, cascade) -> the languages each speaks."""
        info = model.info
        self.has_vocoder = bool(info["vocoder"])
        self.info = info

    # -- life -----------------------------------------------------------------------------------
    async def start(self) -> None:
        def warm() -> None:
            routed = set(ROUTE_TASKS.values()) | {t for way in self.ways for t in WAY_TASKS[way]}
            tasks = [get_task(name) for name in self.task_names & routed]  # what routes run
            modalities = {m for t in tasks for m in (t.source, t.target)}
            if "speech" in modalities:
                self.model.codebook("speech")
            if "image" in modalities:
                self.model.codebook("image")
            if self.has_vocoder and any(t.target == "speech" for t in tasks):
                self.model.vocoder  # noqa: B018 (loads it)

        await asyncio.get_running_loop().run_in_executor(self.executor, warm)

    async def stop(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=True)

    # -- what the page and /health show ------------------------------------------------------
    def routes(self) -> dict[str, bool]:
        """Route -> whether this model can serve it."""
        return {r: (bool(self.ways) if r == "translate-speech" else t in self.task_names)
                and (r not in SPEECH_ROUTES or self.has_vocoder) for r, t in ROUTE_TASKS.items()}

    # -- checks ----------------------------------------------------------------------------------
    def require(self, route: str) -> None:
        task = ROUTE_TASKS[route]
        if route == "translate-speech" and not self.ways:
            raise RequestError(f"/v1/{route}: the model ({self.model.path}) was not trained to translate speech into "
                               f"speech: that needs s2st, s2st_chain, or s2tt and t2s (its tasks: "
                               f"{', '.join(self.model.tasks)})", 400, None, "task_not_trained")
        if route != "translate-speech" and task not in self.task_names:
            raise RequestError(f"/v1/{route}: the model ({self.model.path}) was not trained for {task} "
                               f"(its tasks: {', '.join(self.model.tasks)})", 400, None, "task_not_trained")
        if route in SPEECH_ROUTES and not self.has_vocoder:
            units = " (or ask /v1/synthesize-units for the units)" if route == "speak" else ""
            raise RequestError(f"/v1/{route}: the model ({self.model.path}) has no vocoder, so it cannot make speech; "
                               f"train one with `dmlm vocoder train {self.model.path}`{units}", 400, None, "no_vocoder")

    def check_lang(self, lang: str, param: str, targets: bool = False) -> str:
        """`lang` if the vocabulary has its tag (and, for `targets`, the model translates into it)."""
        if targets and lang not in self.targets:
            raise RequestError(f"{param}: the model translates into {', '.join(self.targets) or 'no language'}, "
                               f"not {lang!r}", 400, param)
        try:
            self.model.vocab.lang(lang)
        except UserError:
            raise RequestError(f"{param}: language {lang!r} is not in the model's vocabulary; expected a language code "
                               f"such as {', '.join(self.languages)}", 400, param) from None
        return lang

    def check_way(self, how: str | None, to: str | None) -> tuple[str, str]:
        """(how, to) of a speech-to-speech request: a way the model was trained for (None: the first) and a
        language it speaks that way (None: the first)."""
        how = how or next(iter(self.ways))
        if how not in self.ways:
            need = " and ".join(WAY_TASKS[how]) if how in WAY_TASKS else "?"
            raise RequestError(f"how: the model was not trained to translate speech {how!r} (that needs {need}); "
                               f"expected one of {', '.join(self.ways)}", 400, "how", "task_not_trained")
        to = to or next(iter(self.ways[how]), "")
        if to not in self.ways[how]:
            raise RequestError(f"to: the model translates speech {how} into {', '.join(self.ways[how]) or 'no language'}"
                               f", not {to!r}", 400, "to")
        return how, self.check_lang(to, "to")

    def check_decoding(self, decoding: dict, speech_out: bool = False) -> dict:
        """The non-default decoding keywords of a request, validated (400 naming the field)."""
        if decoding.get("rerank", 0) > self.cfg.max_rerank:
            from dmlm.serve.media import limit_error

            raise limit_error("rerank", decoding["rerank"], "max_rerank", self.cfg.max_rerank, "rerank")
        defaults = DecodingOptions()
        decoding = {k: v for k, v in decoding.items() if v is not None and v != getattr(defaults, k)}
        try:
            make_options(None, SPEECH_OUT_FIELDS if speech_out else USER_FIELDS, **decoding)
        except UserError as e:
            raise RequestError(str(e), 400, next(iter(decoding), None)) from None
        return decoding

    # -- tasks (each awaits its batch) -------------------------------------------------------
    async def _submit(self, key: tuple, fn, item: Any) -> Done:
        return await self.batcher.submit(key, fn, item)

    async def transcribe(self, wav, lang: str, decoding: dict) -> Done:
        self.require("transcribe")
        key = ("asr", lang, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.transcribe(items, lang=lang, **decoding), wav)

    async def translate(self, wav, to: str, src: str, decoding: dict) -> Done:
        self.require("translate")
        key = ("s2tt", src, to, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.translate(items, to=to, src=src, **decoding), wav)

    async def caption(self, image, lang: str, decoding: dict) -> Done:
        self.require("caption")
        key = ("i2t", lang, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.caption(items, lang=lang, **decoding), image)

    async def synthesize_units(self, text: str, lang: str, decoding: dict) -> Done:
        self.require("synthesize-units")
        key = ("t2s-units", lang, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.synthesize_units(items, lang=lang, **decoding), text)

    async def speak(self, text: str, lang: str, decoding: dict) -> Done:
        self.require("speak")
        key = ("t2s-speech", lang, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.speak(items, lang=lang, **decoding), text)

    async def translate_speech(self, wav, to: str, src: str, how: str, decoding: dict) -> Done:
        self.require("translate-speech")
        key = ("s2st", how, src, to, _frozen(decoding))
        return await self._submit(key, lambda items: self.model.translate(items, to=to, src=src, speech=True, how=how,
                                                                          **decoding), wav)


def _frozen(decoding: dict) -> tuple:
    return tuple(sorted(decoding.items()))


SPEECH_ROUTES = ("speak", "translate-speech")
"""Routes that answer with speech: they need the model's vocoder."""


def _way_targets(specs: list[tuple[str, str | None]], tasks: tuple[str, ...]) -> list[str]:
    """The languages a way (its `tasks`) speaks into: those of its first task (s2st:es, s2tt:es) that each of
    the others takes, as `DMLM.translate` checks (a task trained without languages takes any)."""
    langs = {name: [lang for n, lang in specs if n == name and lang] for name in tasks}
    return [lang for lang in langs[tasks[0]] if all(not langs[t] or lang in langs[t] for t in tasks[1:])]

