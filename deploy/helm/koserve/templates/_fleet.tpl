{{/*
Fleet helpers: the gateway as a sidecar of each Triton pod (the InferencePool's endpoints), the endpoint picker's
names, and KEDA settings per model. Per-model context: (dict "root" $ "name" <model key> "m" <model values>).
*/}}

{{/* "true" when the koserve gateway runs as a container of every Triton pod (gateway.mode=sidecar). */}}
{{- define "koserve.gateway.sidecar" -}}
{{- if and .Values.gateway.enabled (eq (default "deployment" .Values.gateway.mode) "sidecar") -}}true{{- end -}}
{{- end -}}

{{/* Refusals that span blocks: inferencePool needs the sidecar, KEDA and the HPA exclude each other. */}}
{{- define "koserve.fleet.validate" -}}
{{- if .Values.inferencePool.enabled -}}
{{- if not (include "koserve.gateway.sidecar" .) -}}
{{- fail "inferencePool.enabled: the pool's endpoints are koserve gateways inside the Triton pods, so the endpoint picker sees the OpenAI request: set gateway.enabled=true and gateway.mode=sidecar" -}}
{{- end -}}
{{- if not .Values.inferencePool.gateway.name -}}
{{- fail "inferencePool.gateway.name: name the Gateway (gateway.networking.k8s.io/v1) the HTTPRoute attaches to; your Gateway implementation makes it" -}}
{{- end -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- range $name, $m := .Values.models -}}
{{- if and $m.enabled $m.autoscaling.enabled -}}
{{- fail (printf "models.%s.autoscaling.enabled and keda.enabled: choose one autoscaler (KEDA makes its own HPA; two HPAs on one workload fight over its replicas)" $name) -}}
{{- end -}}
{{- end -}}
{{- if not (or .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled) -}}
{{- fail "keda.enabled: KEDA reads the engine metrics from Prometheus by the koserve_model label the chart's monitors add: enable monitoring.podMonitor or monitoring.serviceMonitor" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when a model's replicas belong to an autoscaler (the chart's HPA or KEDA's): the workload omits replicas. */}}
{{- define "koserve.model.autoscaled" -}}
{{- if or .m.autoscaling.enabled .root.Values.keda.enabled -}}true{{- end -}}
{{- end -}}

{{/* KEDA settings of one model: keda.* overlaid with keda.models.<model key> (JSON). */}}
{{- define "koserve.model.keda" -}}
{{- $k := omit (deepCopy .root.Values.keda) "enabled" "models" "prometheus" -}}
{{- $over := dig .name dict (default dict .root.Values.keda.models) -}}
{{- toJson (mergeOverwrite $k (deepCopy $over)) -}}
{{- end -}}

{{- define "koserve.model.eppName" -}}
{{- printf "%s-epp" (include "koserve.model.fullname" .) -}}
{{- end -}}

{{- define "koserve.model.eppSelectorLabels" -}}
{{ include "koserve.selectorLabels" .root }}
app.kubernetes.io/component: endpoint-picker
koserve.io/model: {{ .name }}
{{- end -}}

{{- define "koserve.model.eppLabels" -}}
{{ include "koserve.labels" .root }}
app.kubernetes.io/component: endpoint-picker
koserve.io/model: {{ .name }}
{{- end -}}

{{/* Pod labels the InferencePool selects: the model's Triton pods (multi-node: the leader, which serves). */}}
{{- define "koserve.model.poolSelector" -}}
{{ include "koserve.model.selectorLabels" . }}
{{- if .m.multiNode.enabled }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end }}
{{- end -}}

{{/*
The gateway container of a Triton pod (gateway.mode=sidecar; nothing otherwise). It talks gRPC to Triton on
127.0.0.1 and reads the model's tokenizer from the models volume the pod already mounts.
*/}}
{{- define "koserve.model.gatewaySidecar" -}}
{{- if include "koserve.gateway.sidecar" .root }}
{{- $gw := .root.Values.gateway }}
{{- if not $gw.apiKeysSecret.name }}
{{- fail "gateway.enabled=true: the gateway needs gateway.apiKeysSecret.name, a Secret with its API keys (comma-separated under the key gateway.apiKeysSecret.key), e.g. kubectl create secret generic koserve-api-keys --from-literal=api-keys=key1,key2" }}
{{- end }}
{{- $spec := printf "%s=127.0.0.1:%v,profile=%s,protocol=grpc,target=%s,tokenizer=%s" .name .root.Values.triton.ports.grpc .m.profile $gw.target (include "koserve.model.tokenizerDir" .) }}
- name: gateway
  image: {{ include "koserve.imageOr" (dict "root" .root "image" $gw.image) }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
  command: ["koserve"]
  # `--model NAME=URL,...` (src/koserve/cli/gateway.py): the OpenAI model name is the chart's model key.
  args:
    - gateway
    - --model
    - {{ $spec | quote }}
    - --host
    - 0.0.0.0
    - --port
    - {{ $gw.port | quote }}
    - --workers
    - {{ $gw.workers | quote }}
    # On SIGTERM streams in flight finish for the model's stream grace, as koserve serve's beside it.
    - --drain-grace
    - {{ include "koserve.model.streamSeconds" . | quote }}
  env:
    - name: HOME
      value: /tmp
    - name: KOSERVE_API_KEYS
      valueFrom:
        secretKeyRef:
          name: {{ $gw.apiKeysSecret.name }}
          key: {{ $gw.apiKeysSecret.key }}
  ports:
    - {name: openai, containerPort: {{ $gw.port }}, protocol: TCP}
  # /health: 200 while this pod's Triton answers ready; /metrics: the gateway process itself answers.
  readinessProbe:
    httpGet: {path: /health, port: openai}
    periodSeconds: {{ $gw.probes.readiness.periodSeconds }}
    failureThreshold: {{ $gw.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ $gw.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet: {path: /metrics, port: openai}
    periodSeconds: {{ $gw.probes.liveness.periodSeconds }}
    failureThreshold: {{ $gw.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ $gw.probes.liveness.timeoutSeconds }}
  {{- include "koserve.preStop" .root | nindent 2 }}
  resources:
    {{- toYaml $gw.resources | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ .root.Values.storage.mountPath }}
      readOnly: true
    - name: gateway-tmp
      mountPath: /tmp
{{- end }}
{{- end -}}

{{/* The sidecar's own scratch volume (nothing when there is no sidecar). */}}
{{- define "koserve.model.gatewaySidecarVolumes" -}}
{{- if include "koserve.gateway.sidecar" .root }}
- name: gateway-tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}
{{- end -}}

{{/*
Drain. The stream grace of a model: how long a stream admitted just before SIGTERM may still need, the profile's
longest stream (shutdown.streamTokens[<profile>]) × shutdown.worstInterTokenSeconds + shutdown.firstTokenSeconds,
rounded up (koserve.server.drain.drain_grace); shutdown.streamGraceSeconds, when set, replaces it for every model.
koserve serve gets it as --drain-grace.
*/}}
{{- define "koserve.model.streamSeconds" -}}
{{- $s := .root.Values.shutdown -}}
{{- if kindIs "invalid" $s.streamGraceSeconds -}}
{{- $tokens := dig .m.profile 0 (default dict $s.streamTokens) -}}
{{- if not $tokens -}}
{{- fail (printf "shutdown.streamTokens has no entry for profile %s (models.%s.profile): give its longest stream in tokens, or set shutdown.streamGraceSeconds" .m.profile .name) -}}
{{- end -}}
{{- $ms := add (ceil (mulf (float64 $tokens) (float64 $s.worstInterTokenSeconds) 1000.0)) (mul (int $s.firstTokenSeconds) 1000) -}}
{{- div (add $ms 999) 1000 -}}
{{- else -}}
{{- int $s.streamGraceSeconds -}}
{{- end -}}
{{- end -}}

{{/*
preStop (serve while the endpoint leaves Services) + the stream grace (koserve serve drains) + Triton's exit timeout
(koserve serve sends SIGKILL 5 s after it) + 10 s to exit.
*/}}
{{- define "koserve.model.terminationGracePeriodSeconds" -}}
{{- $s := .root.Values.shutdown -}}
{{- add (int $s.drainSeconds) (int (include "koserve.model.streamSeconds" .)) (int $s.exitTimeoutSeconds) 15 -}}
{{- end -}}
