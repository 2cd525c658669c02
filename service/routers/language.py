"""Language: per-word surprisal and next-word prediction from the linear recurrent LM."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from v1motion.models.language.scoring import LanguageScorer
from v1motion.service.deps import SettingsDep, StateDep, get_scorer
from v1motion.service.http_errors import RETRY_AFTER
from v1motion.service.schemas import RequestBody
from v1motion.service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/language", tags=["language"])


def load_scorer(settings: Settings) -> LanguageScorer:
    """Load the model named by the settings and compile its kernels (called from the lifespan)."""
    scorer = LanguageScorer.from_file(settings.lm_weights)
    scorer.score("the")  # compile the recurrence kernel before the first request
    log.info("language model loaded from %s (V=%s)", settings.lm_weights, len(scorer.vocab))
    return scorer


class ScoreRequest(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "The stock market fell sharply on Monday."}]}
    )

    text: str = Field(
        description="text to score; lower-cased and tokenised PTB-style: numbers become N, . ! ? ; "
        "and line breaks end a sentence (<eos>; PTB writes one sentence a line), other "
        "punctuation, quotes and emoji are dropped"
    )


class TokenScore(BaseModel):
    token: str = Field(description="the token read from the text")
    word: str = Field(description="the vocabulary entry scored (<unk> for unknown tokens)")
    unknown: bool
    surprisal_bits: float = Field(description="-log2 P(word | preceding words)")


_OVER_EVERY_TOKEN = (
    "over every token, an unknown one scored as <unk> (the class of every rare word, as in PTB): "
    "text of unknown words reads low; see n_unknown"
)


class ScoreResponse(BaseModel):
    tokens: list[TokenScore]
    perplexity: float = Field(description=f"2 ** bits_per_token, {_OVER_EVERY_TOKEN}")
    bits_per_token: float = Field(description=f"mean surprisal in bits, {_OVER_EVERY_TOKEN}")
    n_unknown: int = Field(description="tokens outside the model's vocabulary")


class NextRequest(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"context": "the stock", "k": 5}]})

    context: str = Field("", description="text read so far (may be empty: start of a sentence)")
    k: int = Field(
        10, description="how many candidate next words, 1 to the server's limit (100 by default)"
    )


class NextWord(BaseModel):
    word: str = Field(
        description="a vocabulary word (<eos>: the sentence ends; N: a number); never <unk>"
    )
    probability: float = Field(description="in [0, 1] (not percent), given the text so far")


class NextResponse(BaseModel):
    context_tokens: list[str]
    words: list[NextWord]


Scorer = Annotated[LanguageScorer, Depends(get_scorer)]
AppSettings = SettingsDep


def _check_length(text: str, field: str, settings: Settings) -> None:
    if len(text) > settings.lm_max_chars:
        raise HTTPException(
            413, detail=f"{field} is {len(text)} characters; the limit is {settings.lm_max_chars}"
        )


TEXT_TOO_LONG = {
    413: {"description": "the text is longer than the server's limit"},
    503: {
        "description": "one request per core is running and 16 more wait: retry (Retry-After)",
        "headers": RETRY_AFTER,
    },
}


@router.post("/score", response_model=ScoreResponse, responses=TEXT_TOO_LONG)
async def score_text(
    body: ScoreRequest, scorer: Scorer, settings: AppSettings, state: StateDep, request: Request
) -> ScoreResponse:
    """Per-token surprisal in bits and the perplexity of the text."""
    _check_length(body.text, "text", settings)
    try:
        async with state.language_slots.hold(request):
            result = await run_in_threadpool(scorer.score, body.text)
    except ValueError as err:
        raise HTTPException(422, detail=str(err)) from err
    n_unknown = sum(t["unknown"] for t in result["tokens"])
    return ScoreResponse(**result, n_unknown=n_unknown)


@router.post("/next", response_model=NextResponse, responses=TEXT_TOO_LONG)
async def next_words(
    body: NextRequest, scorer: Scorer, settings: AppSettings, state: StateDep, request: Request
) -> NextResponse:
    """The k most probable next words after the context."""
    _check_length(body.context, "context", settings)
    if not 1 <= body.k <= settings.lm_max_k:
        raise HTTPException(
            422, detail=f"k must be between 1 and {settings.lm_max_k}, got {body.k}"
        )
    async with state.language_slots.hold(request):
        words = await run_in_threadpool(scorer.next_words, body.context, body.k)
    return NextResponse(
        context_tokens=scorer.tokens(body.context), words=[NextWord(**w) for w in words]
    )
