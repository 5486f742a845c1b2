# CPU image for `nanovlm serve`. Build: docker build -t nanovlm .
# Run:   docker run -p 8000:8000 -v $PWD/runs/demo/model:/models/model:ro -v $PWD/keys.json:/secrets/keys.json:ro nanovlm
# Every server option is an environment variable NANOVLM_<OPTION> (see `nanovlm serve --help`).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# The CPU build of torch first, so that nothing pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve]"

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin nanovlm
USER 10001

# Inside a container the server must listen on all interfaces (the host decides what is published).
ENV NANOVLM_HOST=0.0.0.0 \
    NANOVLM_PORT=8000 \
    NANOVLM_MODEL=/models/model \
    NANOVLM_KEYS_FILE=/secrets/keys.json
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"

ENTRYPOINT ["nanovlm", "serve"]
