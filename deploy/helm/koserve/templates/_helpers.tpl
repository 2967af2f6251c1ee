{{/* Chart name, truncated to 63 characters. */}}
{{- define "koserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; model resources append "-<model key>". */}}
{{- define "koserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "koserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "koserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "koserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "koserve.labels" -}}
helm.sh/chart: {{ include "koserve.chart" . }}
{{ include "koserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Per-model context: (dict "root" $ "name" <model key> "m" <model values>).
*/}}
{{- define "koserve.model.fullname" -}}
{{- printf "%s-%s" (include "koserve.fullname" .root) .name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "koserve.model.selectorLabels" -}}
{{ include "koserve.selectorLabels" .root }}
app.kubernetes.io/component: triton
koserve.io/model: {{ .name }}
{{- end -}}

{{- define "koserve.model.labels" -}}
{{ include "koserve.labels" .root }}
app.kubernetes.io/component: triton
koserve.io/model: {{ .name }}
koserve.io/profile: {{ .m.profile }}
{{- end -}}

{{/* GPUs one server needs: TP × PP, the engine's world size. */}}
{{- define "koserve.model.worldSize" -}}
{{- mul (int .m.engine.tensorParallel) (int .m.engine.pipelineParallel) -}}
{{- end -}}

{{/* GPUs per pod: the whole world size, or its share per node for a multi-node group. */}}
{{- define "koserve.model.gpusPerPod" -}}
{{- $ws := int (include "koserve.model.worldSize" .) -}}
{{- if .m.multiNode.enabled -}}
{{- $nodes := int .m.multiNode.nodes -}}
{{- if ne (mod $ws $nodes) 0 -}}
{{- fail (printf "models.%s: tensorParallel × pipelineParallel = %d GPUs cannot be split evenly over multiNode.nodes = %d" .name $ws $nodes) -}}
{{- end -}}
{{- div $ws $nodes -}}
{{- else -}}
{{- $ws -}}
{{- end -}}
{{- end -}}

{{/* Checks that templates cannot express in values.schema.json. */}}
{{- define "koserve.model.validate" -}}
{{- $ports := .root.Values.triton.ports -}}
{{- if ne (len (uniq (list $ports.http $ports.grpc $ports.metrics $ports.health))) 4 -}}
{{- fail (printf "triton.ports: http, grpc, metrics and health must be four different ports, got %v" $ports) -}}
{{- end -}}
{{- $ws := int (include "koserve.model.worldSize" .) -}}
{{- if and (not .m.multiNode.enabled) (gt $ws 8) -}}
{{- fail (printf "models.%s: tensorParallel × pipelineParallel = %d GPUs does not fit one node (max 8): set multiNode.enabled=true" .name $ws) -}}
{{- end -}}
{{- if and .m.multiNode.enabled (not .m.multiNode.sshSecret) -}}
{{- fail (printf "models.%s.multiNode.sshSecret: name a Secret with an SSH key pair (id_ed25519, id_ed25519.pub) for mpirun between the nodes" .name) -}}
{{- end -}}
{{- $restricted := .root.Values.triton.restrictedApi.categories -}}
{{- if and (has "metadata" $restricted) (has "model-config" $restricted) -}}
{{- fail "triton.restrictedApi.categories: restrict model-config or metadata, not both: koserve's clients (the gateway, koserve chat, helm test) read a model's inputs from one of them without a key" -}}
{{- end -}}
{{- $_ := include "koserve.model.gpusPerPod" . -}}
{{- include "koserve.model.checkRecipe" . -}}
{{- range $kind, $r := .m.resources -}}
{{- if hasKey $r "nvidia.com/gpu" -}}
{{- fail (printf "models.%s.resources.%s: do not set nvidia.com/gpu; the chart requests engine.tensorParallel × engine.pipelineParallel GPUs" $.name $kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set (it wins over the tag), else repository:tag.
(dict "repository" … "tag" … "digest" …) */}}
{{- define "koserve.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/*
engine.tensorParallel / pipelineParallel / profile against the built-in recipe named by engine.recipe. The chart
cannot read recipes/ (outside the chart): engine-recipes.yaml is a copy of each built-in recipe's profile and
parallelism, which tests/deploy keeps equal to recipes/*.yaml. A recipe not in it (a custom one) is not checked here;
the init container still checks the engine's world size.
*/}}
{{- define "koserve.model.checkRecipe" -}}
{{- $recipes := .root.Files.Get "engine-recipes.yaml" | fromYaml -}}
{{- $r := get $recipes .m.engine.recipe -}}
{{- if $r -}}
{{- $tp := int .m.engine.tensorParallel -}}
{{- $pp := int .m.engine.pipelineParallel -}}
{{- if or (ne $tp (int $r.tp)) (ne $pp (int $r.pp)) -}}
{{- fail (printf "models.%s.engine: tensorParallel=%d, pipelineParallel=%d contradict engine.recipe %s (recipes/%s.yaml: tp %d, pp %d); set them to the recipe's or name a recipe built for TP%d × PP%d" .name $tp $pp .m.engine.recipe .m.engine.recipe (int $r.tp) (int $r.pp) $tp $pp) -}}
{{- end -}}
{{- if ne .m.profile $r.profile -}}
{{- fail (printf "models.%s.profile=%s contradicts engine.recipe %s, which builds profile %s" .name .m.profile .m.engine.recipe $r.profile) -}}
{{- end -}}
{{- if ne (default "trtllm" .m.engine.backend) (default "trtllm" $r.backend) -}}
{{- fail (printf "models.%s.engine.backend=%s contradicts engine.recipe %s, which builds for backend %s (recipes/%s.yaml backend:); pick a recipe for the backend or set engine.backend %s" .name (default "trtllm" .m.engine.backend) .m.engine.recipe (default "trtllm" $r.backend) .m.engine.recipe (default "trtllm" $r.backend)) -}}
{{- end -}}
{{- if and .m.multiNode.enabled $r.gpusPerNode -}}
{{- $perPod := int (include "koserve.model.gpusPerPod" .) -}}
{{- if ne $perPod (int $r.gpusPerNode) -}}
{{- fail (printf "models.%s.multiNode.nodes=%d gives %d GPU(s) per pod but engine.recipe %s is built for %d GPU(s) per node (recipes/%s.yaml parallelism.gpus_per_node)" .name (int .m.multiNode.nodes) $perPod .m.engine.recipe (int $r.gpusPerNode) .m.engine.recipe) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "koserve.image" -}}
{{- include "koserve.imageRef" .Values.image -}}
{{- end -}}

{{/* image for a component with an optional override (dict "root" $ "image" <image values>): its own repository
(with its own tag, else image.tag, and its own digest), else the main image. */}}
{{- define "koserve.imageOr" -}}
{{- if .image.repository -}}
{{- include "koserve.imageRef" (dict "repository" .image.repository "tag" (default .root.Values.image.tag .image.tag) "digest" .image.digest) -}}
{{- else -}}
{{- include "koserve.image" .root -}}
{{- end -}}
{{- end -}}

{{/* The images the enabled parts of the release run: a JSON object, image reference → the values key that sets
it (image, gateway.image or tests.image). */}}
{{- define "koserve.imagesInUse" -}}
{{- $images := dict (include "koserve.image" .) "image" -}}
{{- range $key, $image := dict "gateway" .Values.gateway.image "tests" .Values.tests.image -}}
{{- if and (get $.Values $key).enabled $image.repository -}}
{{- $_ := set $images (include "koserve.imageOr" (dict "root" $ "image" $image)) (printf "%s.image" $key) -}}
{{- end -}}
{{- end -}}
{{- if .Values.inferencePool.enabled -}}
{{- $_ := set $images (include "koserve.eppImage" .) "inferencePool.endpointPicker.image" -}}
{{- end -}}
{{- toJson $images -}}
{{- end -}}

{{- define "koserve.eppImage" -}}
{{- $i := .Values.inferencePool.endpointPicker.image -}}
{{- include "koserve.imageRef" (dict "repository" (printf "%s/%s" $i.registry $i.repository) "tag" $i.tag "digest" $i.digest) -}}
{{- end -}}

{{- define "koserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "koserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Absolute paths inside the pod. */}}
{{- define "koserve.model.engineDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.storage.mountPath) (trimPrefix "/" .m.engine.dir) -}}
{{- end -}}
{{- define "koserve.model.tokenizerDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.storage.mountPath) (trimPrefix "/" .m.engine.tokenizerDir) -}}
{{- end -}}

{{- define "koserve.repoDir" -}}/repo/model_repository{{- end -}}

{{/* The volume holding engines. */}}
{{- define "koserve.storageVolume" -}}
- name: models
{{- if eq .Values.storage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-models" (include "koserve.fullname" .)) .Values.storage.pvc.existingClaim }}
{{- else if eq .Values.storage.type "hostPath" }}
  hostPath:
    path: {{ .Values.storage.hostPath.path }}
    type: Directory
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.storage.emptyDir.sizeLimit }}
{{- end }}
{{- end -}}

{{/* Pod affinity/anti-affinity and node affinity for a model's Triton pods. */}}
{{- define "koserve.model.affinity" -}}
{{- $affinity := deepCopy (default dict .m.affinity) -}}
{{- if and .m.gpu.product (not (hasKey $affinity "nodeAffinity")) -}}
{{- $term := dict "matchExpressions" (list (dict "key" "nvidia.com/gpu.product" "operator" "In" "values" (list .m.gpu.product))) -}}
{{- $_ := set $affinity "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" (list $term))) -}}
{{- end -}}
{{- if and .root.Values.colocateModels (not (hasKey $affinity "podAffinity")) -}}
{{- $sel := dict "matchLabels" (dict "app.kubernetes.io/instance" .root.Release.Name "app.kubernetes.io/component" "triton") -}}
{{- $_ := set $affinity "podAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list (dict "labelSelector" $sel "topologyKey" "kubernetes.io/hostname"))) -}}
{{- end -}}
{{- toYaml $affinity -}}
{{- end -}}

{{/* Volumes shared by the Triton pods (and LWS leader/worker). */}}
{{- define "koserve.model.volumes" -}}
{{ include "koserve.storageVolume" .root }}
- name: repo
  emptyDir:
    sizeLimit: 1Gi
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .m.shmSize }}
{{ include "koserve.scratchVolumes" .root }}
{{- end -}}

{{/*
The root filesystem is read-only (containerSecurityContext.readOnlyRootFilesystem): what a process writes goes to
emptyDirs. tmp → /tmp: temp files, the log koserve serve keeps of tritonserver, Open MPI's session directory.
home → $HOME: ~/.cache (Hugging Face, torch, CUDA's JIT cache under ~/.nv), the multi-node leader's ~/.ssh and MPI
hostfile, a worker's sshd files.
*/}}
{{- define "koserve.homeDir" -}}/home/koserve{{- end -}}

{{/* HOME and KOSERVE_CACHE (the image's /var/cache/koserve is on the read-only root): both in the home emptyDir. */}}
{{- define "koserve.homeEnv" -}}
- name: HOME
  value: {{ include "koserve.homeDir" . }}
- name: KOSERVE_CACHE
  value: {{ printf "%s/.cache/koserve" (include "koserve.homeDir" .) }}
{{- end -}}

{{- define "koserve.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmp.sizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ .Values.scratch.home.sizeLimit }}
{{- end -}}

{{- define "koserve.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: {{ include "koserve.homeDir" . }}
{{- end -}}

{{/*
Init container: wait for the engine (optional), check its world size against the GPUs this pod set requests, then
render the Triton model repository with `koserve repo render`.
*/}}
{{- define "koserve.model.renderInitContainer" -}}
{{- $pytorch := eq (default "trtllm" .m.engine.backend) "pytorch" -}}
{{- $marker := ternary (ternary "checkpoint_manifest.json" "engine_manifest.json" $pytorch) "config.json" .m.build.enabled -}}
- name: render-repository
  image: {{ include "koserve.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml .root.Values.initContainer.resources | nindent 4 }}
  env:
    - name: ENGINE_DIR
      value: {{ include "koserve.model.engineDir" . | quote }}
    - name: TOKENIZER_DIR
      value: {{ include "koserve.model.tokenizerDir" . | quote }}
    - name: KOSERVE_WORLD_SIZE
      value: {{ include "koserve.model.worldSize" . | quote }}
    - name: ENGINE_WAIT_SECONDS
      value: {{ .m.engine.waitSeconds | quote }}
    - name: ENGINE_READY_FILE
      value: {{ $marker | quote }}
    {{- include "koserve.homeEnv" . | nindent 4 }}
  command: ["/bin/bash", "-ec"]
  args:
    - |
      deadline=$(( $(date +%s) + ENGINE_WAIT_SECONDS ))
      until [ -f "$ENGINE_DIR/$ENGINE_READY_FILE" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
          echo "engine not found: $ENGINE_DIR/$ENGINE_READY_FILE (waited ${ENGINE_WAIT_SECONDS}s); build it (models.<name>.build) or fix engine.dir" >&2
          exit 1
        fi
        sleep 10
      done
      {{- if $pytorch }}
      # engine.backend pytorch: ENGINE_DIR holds a Hugging Face checkpoint; the LLM API shards it over the ranks. The
      # recipe's limits come from the checkpoint_manifest.json `koserve build run` wrote (render's defaults without).
      limits=$(python3 - <<'PY'
      import json, os
      path = os.path.join(os.environ["ENGINE_DIR"], "checkpoint_manifest.json")
      serving = json.load(open(path)).get("serving", {}) if os.path.isfile(path) else {}
      flags = {"max_batch_size": "--max-batch-size", "max_input_len": "--max-input-len",
               "max_seq_len": "--max-seq-len", "max_num_tokens": "--max-num-tokens"}
      print(" ".join(f"{flag} {int(serving[key])}" for key, flag in flags.items() if key in serving))
      PY
      )
      exec koserve repo render --profile {{ .m.profile }} --tokenizer "$TOKENIZER_DIR" --engine-backend pytorch --checkpoint "$ENGINE_DIR" --tp {{ .m.engine.tensorParallel }} --pp {{ .m.engine.pipelineParallel }} $limits --out {{ include "koserve.repoDir" . }}
      {{- else }}
      python3 - <<'PY'
      import json, os, sys
      engine_dir = os.environ["ENGINE_DIR"]
      cfg = json.load(open(os.path.join(engine_dir, "config.json")))
      mapping = cfg.get("pretrained_config", {}).get("mapping", {})
      tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
      world = int(mapping.get("world_size", tp * pp))
      want = int(os.environ["KOSERVE_WORLD_SIZE"])
      if world != want:
          sys.exit(f"{engine_dir} was built for world_size={world} (tp={tp}, pp={pp}) but this deployment runs "
                   f"{want} ranks (engine.tensorParallel x engine.pipelineParallel): fix the values or the engine")
      print(f"engine {engine_dir}: tp={tp} pp={pp} world_size={world}")
      PY
      # TensorRT-LLM in this image vs the engine's config.json version vs the recipe's (engine_manifest.json).
      koserve build preflight --engine-dir "$ENGINE_DIR"{{ if .m.multiNode.enabled }} --gpus-per-node {{ include "koserve.model.gpusPerPod" . }}{{ end }}
      exec koserve repo render --profile {{ .m.profile }} --tokenizer "$TOKENIZER_DIR" --engine "$ENGINE_DIR" --out {{ include "koserve.repoDir" . }}
      {{- end }}
  volumeMounts:
    - name: models
      mountPath: {{ .root.Values.storage.mountPath }}
      readOnly: true
    - name: repo
      mountPath: /repo
    {{- include "koserve.scratchMounts" . | nindent 4 }}
{{- end -}}

{{/* extraInitContainers, each given initContainer.resources and containerSecurityContext (read-only root) unless
it sets its own (a list, maybe empty). */}}
{{- define "koserve.extraInitContainers" -}}
{{- $out := list -}}
{{- range .Values.extraInitContainers -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "resources") -}}
{{- $_ := set $c "resources" (deepCopy $.Values.initContainer.resources) -}}
{{- end -}}
{{- if not (hasKey $c "securityContext") -}}
{{- $_ := set $c "securityContext" (deepCopy $.Values.containerSecurityContext) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- if $out -}}
{{- toYaml $out -}}
{{- end -}}
{{- end -}}

{{/* Volume mounts of the Triton container. */}}
{{- define "koserve.model.serverMounts" -}}
- name: models
  mountPath: {{ .root.Values.storage.mountPath }}
  readOnly: true
- name: repo
  mountPath: /repo
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{ include "koserve.scratchMounts" . }}
{{- end -}}

{{/* Environment of the Triton container. */}}
{{- define "koserve.model.serverEnv" -}}
{{ include "koserve.homeEnv" . }}
{{- if .root.Values.triton.restrictedApi.secret.name }}
- name: TRITON_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.triton.restrictedApi.secret.name }}
      key: {{ .root.Values.triton.restrictedApi.secret.key }}
{{- end }}
{{- with .root.Values.triton.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The Triton server command: `koserve serve` (which runs `mpirun -n TP×PP tritonserver` on GPUs and waits on it) with
extra tritonserver flags after `--`. A small shell prologue sets the restricted-API key; `exec` keeps koserve as the
process that receives SIGTERM. `--health-port`: koserve's own health server, whose /health/ready and /health/live
the probes use (Triton's /v2/health/ready keeps answering 200 after a python stub died).
Triton names the flag --http-restricted-api for HTTP but --grpc-restricted-protocol for gRPC (2.51 `--help`).
*/}}
{{- define "koserve.model.serverScript" -}}
{{- $t := .root.Values.triton -}}
{{- $restricted := printf "%s:%s=${TRITON_ADMIN_KEY}" (join "," $t.restrictedApi.categories) $t.restrictedApi.header -}}
if [ -z "${TRITON_ADMIN_KEY:-}" ]; then
  TRITON_ADMIN_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
exec koserve serve --repo {{ include "koserve.repoDir" . }} \
  --http-port {{ $t.ports.http }} --grpc-port {{ $t.ports.grpc }} --metrics-port {{ $t.ports.metrics }} \
  --health-port {{ $t.ports.health }} \
  --host 0.0.0.0 --ready-timeout {{ mul (int .m.probes.startup.periodSeconds) (int .m.probes.startup.failureThreshold) }} \
  --drain-grace {{ include "koserve.model.streamSeconds" . }} \
  -- \
  --model-control-mode={{ $t.modelControlMode }} \
  --http-restricted-api="{{ $restricted }}" \
  --grpc-restricted-protocol="{{ $restricted }}" \
  --exit-timeout-secs={{ .root.Values.shutdown.exitTimeoutSeconds }} \
  {{- if $t.histogramLatencies }}
  --metrics-config histogram_latencies=true \
  {{- end }}
  {{- range $t.extraArgs }}
  {{ . | squote }} \
  {{- end }}
  --log-verbose={{ $t.logVerbose }}
{{- end -}}

{{/*
Probes on koserve serve's health server (port `health`): ready = a real one-token request through `ensemble` and
`tensorrt_llm_bls` succeeded recently and every python stub is alive; live = not broken beyond recovery.
*/}}
{{- define "koserve.model.probes" -}}
{{- $p := .m.probes -}}
startupProbe:
  httpGet: {path: /health/ready, port: health}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
readinessProbe:
  httpGet: {path: /health/ready, port: health}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
livenessProbe:
  httpGet: {path: /health/live, port: health}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
{{- end -}}

{{- define "koserve.model.ports" -}}
- {name: http, containerPort: {{ .root.Values.triton.ports.http }}, protocol: TCP}
- {name: grpc, containerPort: {{ .root.Values.triton.ports.grpc }}, protocol: TCP}
- {name: metrics, containerPort: {{ .root.Values.triton.ports.metrics }}, protocol: TCP}
- {name: health, containerPort: {{ .root.Values.triton.ports.health }}, protocol: TCP}
{{- end -}}

{{/* preStop: keep serving while the endpoint is removed from Services, then Triton drains on SIGTERM. */}}
{{- define "koserve.preStop" -}}
lifecycle:
  preStop:
    exec:
      command: ["/bin/sh", "-c", "sleep {{ .Values.shutdown.drainSeconds }}"]
{{- end -}}

{{- define "koserve.dnsPorts" -}}
- {port: 53, protocol: UDP}
- {port: 53, protocol: TCP}
{{- end -}}

{{/* Enabled models, as a list of contexts. */}}
{{- define "koserve.enabledModelNames" -}}
{{- $names := list -}}
{{- range $name, $m := .Values.models -}}
{{- if $m.enabled -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Container resources with the GPU count of one pod in requests and limits. */}}
{{- define "koserve.model.resources" -}}
{{- $gpus := include "koserve.model.gpusPerPod" . -}}
{{- $res := deepCopy (default dict .m.resources) -}}
{{- $req := default dict $res.requests -}}
{{- $lim := default dict $res.limits -}}
{{- $_ := set $req "nvidia.com/gpu" $gpus -}}
{{- $_ := set $lim "nvidia.com/gpu" $gpus -}}
{{- $_ := set $res "requests" $req -}}
{{- $_ := set $res "limits" $lim -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Pod-level fields shared by the leader and worker templates of a LeaderWorkerSet. */}}
{{- define "koserve.lws.podCommon" -}}
serviceAccountName: {{ include "koserve.serviceAccountName" .root }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountToken }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ include "koserve.model.terminationGracePeriodSeconds" . }}
{{- with .m.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
  {{- include "koserve.model.affinity" . | nindent 2 }}
{{- with .m.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
initContainers:
  {{- include "koserve.extraInitContainers" .root | nindent 2 }}
  {{- include "koserve.model.renderInitContainer" . | nindent 2 }}
volumes:
  {{- include "koserve.model.volumes" . | nindent 2 }}
  - name: ssh-key
    secret:
      secretName: {{ .m.multiNode.sshSecret }}
      defaultMode: 0440
  {{- include "koserve.model.gatewaySidecarVolumes" . | nindent 2 }}
{{- end -}}
