# The iotpipe dashboard (Streamlit), from the pinned requirements.txt.
# Build context: the repository root (docker compose sets it).
FROM python:3.11-slim-bookworm

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY dashboard ./dashboard

# The URL comes from IOTPIPE_DASHBOARD_URL (set by docker-compose.yml).
ENV IOTPIPE_DASHBOARD_ADDRESS=0.0.0.0
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --retries=12 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=2)"
CMD ["dashboard/run.sh", "--port", "8501", "--address", "0.0.0.0"]
