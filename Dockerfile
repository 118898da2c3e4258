# kb's production image: one image for the web server (uvicorn) and the Celery worker.
# The model server (TGI), Postgres+pgvector and Redis run as their own services (docker-compose.yml).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    KB_MEDIA_ROOT=/data/uploads \
    KB_VAR_DIR=/data/var

RUN groupadd --system --gid 10001 kb \
    && useradd --system --uid 10001 --gid kb --create-home --home-dir /home/kb kb \
    && mkdir -p /app /data/uploads /data/var \
    && chown -R kb:kb /data

WORKDIR /app

# The CPU build of torch first, from PyTorch's own index, so that sentence-transformers finds it
# satisfied instead of pulling a CUDA build: the embedding model runs on the CPU here.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

# The project's dependencies alone, in a layer that changes only with pyproject.toml. The
# project itself is not installed: it runs from /app (PYTHONPATH), where settings find
# templates/ and static/ next to kb/.
COPY pyproject.toml ./
# The onnx extra too, so that KB_EMBED_BACKEND=onnx / onnx-int8 works in the image.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['onnx']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .

# DATABASE_URL keeps the settings off the embedded Postgres; collectstatic never connects.
RUN DJANGO_SECRET_KEY=build DATABASE_URL=sqlite:////tmp/build.sqlite3 \
        python manage.py collectstatic --noinput \
    && rm -f /tmp/build.sqlite3

# Questions are embedded through an ONNX export of the bundled model (KB_QUERY_EMBED_BACKEND):
# made here once, into the image's KB_EMBED_CACHE, instead of by each container's first question.
RUN DJANGO_SECRET_KEY=build DATABASE_URL=sqlite:////tmp/build.sqlite3 \
        python manage.py kb_prepare_models \
    && rm -f /tmp/build.sqlite3 \
    && chown -R kb:kb /data/var

USER kb

EXPOSE 8000

# The web server (uvicorn reads WEB_CONCURRENCY for --workers); the worker and the one-shot
# migration override the command (docker-compose.yml).
ENV WEB_CONCURRENCY=2
CMD ["uvicorn", "kb.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--lifespan", "off"]
