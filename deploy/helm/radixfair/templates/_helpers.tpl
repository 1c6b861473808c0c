{{/* Names, labels and shared pod pieces of the radixfair chart. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "radixfair.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: "<release>-radixfair", or just the release name when it already says radixfair. */}}
{{- define "radixfair.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "radixfair.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "radixfair.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: radixfair
{{ include "radixfair.selectorLabels" . }}
{{- end -}}

{{/* The immutable subset that selectors use. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "radixfair.selectorLabels" -}}
app.kubernetes.io/name: {{ include "radixfair.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "radixfair.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "radixfair.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* <registry><repository>:<tag>[-<variant>]. Call with (dict "ctx" $ "repository" "x" "variant" "cpu"). */}}
{{- define "radixfair.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.image.tag -}}
{{- if .variant -}}
{{- printf "%s%s:%s-%s" .ctx.Values.image.registry .repository $tag .variant -}}
{{- else -}}
{{- printf "%s%s:%s" .ctx.Values.image.registry .repository $tag -}}
{{- end -}}
{{- end -}}

{{/* "cuda" or "cpu" for a component with .image.variant and .gpu.count. */}}
{{- define "radixfair.variant" -}}
{{- default (ternary "cuda" "cpu" (gt (int .gpu.count) 0)) .image.variant -}}
{{- end -}}

{{/* Headless Service of the workers; each pod is <fullname>-worker-<i>.<this>. */}}
{{- define "radixfair.workerService" -}}
{{- printf "%s-worker" (include "radixfair.fullname" .) -}}
{{- end -}}

{{/* Whether the served model is the packaged one that prepare-model converts. */}}
{{- define "radixfair.packagedModel" -}}
{{- if eq .Values.model.name "smollm2-135m-instruct" -}}true{{- end -}}
{{- end -}}

{{/* The model directory every component reads: the packaged model converts into /models/<name> too. */}}
{{- define "radixfair.modelDir" -}}
{{- printf "/models/%s" .Values.model.name -}}
{{- end -}}

{{/* Name of the Secret holding the API keys. */}}
{{- define "radixfair.authSecret" -}}
{{- default (printf "%s-secrets" (include "radixfair.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Name of the Secret holding identity-secret and registration-token (auth.internal). */}}
{{- define "radixfair.internalSecret" -}}
{{- default (printf "%s-secrets" (include "radixfair.fullname" .)) .Values.auth.internal.existingSecret -}}
{{- end -}}

{{/*
One generated secret of the chart's Secret, base64: the value given, else the one the installed
Secret already holds (so an upgrade keeps what routers and workers share), else 48 random
characters. Call with (dict "ctx" $ "key" "identity-secret" "value" .Values.auth.internal.x).
*/}}
{{- define "radixfair.generatedSecret" -}}
{{- $name := printf "%s-secrets" (include "radixfair.fullname" .ctx) -}}
{{- $installed := lookup "v1" "Secret" .ctx.Release.Namespace $name -}}
{{- $kept := "" -}}
{{- if $installed -}}
{{- $kept = get (default dict $installed.data) .key -}}
{{- end -}}
{{- if .value -}}
{{- .value | b64enc -}}
{{- else if $kept -}}
{{- $kept -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Secret and key holding the Redis URL. */}}
{{- define "radixfair.redisSecret" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "radixfair.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "radixfair.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{/*
Pod-spec lines every radixfair pod shares. Service links are off because Kubernetes would
otherwise inject <SERVICE>_PORT-style variables; for a Service named "<x>-radixfair-router" in a
release called "radixfair" those start with RADIXFAIR_, and the services read every RADIXFAIR_*
variable as a config field.
*/}}
{{- define "radixfair.podCommon" -}}
serviceAccountName: {{ include "radixfair.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment every radixfair container shares: a writable HOME and tracing. */}}
{{- define "radixfair.commonEnv" -}}
- name: HOME
  value: /tmp
{{- if .Values.otel.endpoint }}
- name: RADIXFAIR_TRACING__EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_INSECURE
  value: {{ .Values.otel.insecure | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerRatio | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.instance.id=$(POD_NAME),k8s.pod.name=$(POD_NAME),k8s.namespace.name={{ .Release.Namespace }}"
{{- end }}
{{- end -}}

{{/* POD_NAME from the downward API; listed first so later variables can refer to it. */}}
{{- define "radixfair.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* The model volume: the shared claim (read-only) or a per-pod emptyDir. */}}
{{- define "radixfair.modelVolume" -}}
- name: models
{{- if .Values.model.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.emptyDirSizeLimit }}
{{- end }}
{{- end -}}

{{/*
The prepare-model init container: runs from the worker image with the worker's config, so it
fills (or checks) exactly the directory the services read. Call with (dict "ctx" $ "variant" "cpu").
*/}}
{{- define "radixfair.prepareModel" -}}
{{- $ctx := .ctx -}}
- name: prepare-model
  image: {{ include "radixfair.image" (dict "ctx" $ctx "repository" $ctx.Values.worker.image.repository "variant" .variant) }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  command: ["python", "/opt/radixfair/prepare_model.py"]
  args: ["--config", "/etc/radixfair/worker.yaml"]
  env:
    - name: HOME
      value: /tmp
    - name: PIP_NO_CACHE_DIR
      value: "1"
  securityContext:
    {{- toYaml $ctx.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $ctx.Values.model.prepare.resources | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/radixfair/worker.yaml
      subPath: worker.yaml
      readOnly: true
    - name: models
      mountPath: /models
      readOnly: {{ not (empty $ctx.Values.model.existingClaim) }}
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Where the TLS Secret (tls.crt, tls.key, ca.crt) is mounted in router and worker pods. */}}
{{- define "radixfair.tlsDir" -}}
/etc/radixfair/tls
{{- end -}}

{{/* The TLS Secret's name; tls.enabled without one is refused with the value to set. */}}
{{- define "radixfair.tlsSecret" -}}
{{- required "tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt (e.g. from cert-manager)" .Values.tls.secretName -}}
{{- end -}}

{{/*
One grpc.health.v1 probe of a radixfair gRPC port. Plaintext: the kubelet's gRPC probe. TLS: the
kubelet's probe cannot speak TLS, so the image's grpc_health_check.py runs with the mounted
certificates, checking the name the certificate holds for this component.
Call with (dict "ctx" $ "port" 50051 "serverName" "x.ns.svc" "period" 5 "failures" 2).
*/}}
{{- define "radixfair.grpcProbe" -}}
{{- if .ctx.Values.tls.enabled }}
{{- $dir := include "radixfair.tlsDir" .ctx }}
exec:
  command:
    - python
    - /opt/radixfair/grpc_health_check.py
    - {{ printf "127.0.0.1:%d" (int .port) | quote }}
    - --ca-cert
    - {{ $dir }}/ca.crt
    - --client-cert
    - {{ $dir }}/tls.crt
    - --client-key
    - {{ $dir }}/tls.key
    - --tls-server-name
    - {{ .serverName }}
# Starting Python and a TLS handshake take longer than the kubelet's 1 s default.
timeoutSeconds: 5
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
periodSeconds: {{ .period }}
failureThreshold: {{ .failures }}
{{- end -}}

{{/* The TLS Secret as a volume of router and worker pods (nothing when TLS is off). */}}
{{- define "radixfair.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "radixfair.tlsSecret" . }}
    # Readable by the pods' group (podSecurityContext.fsGroup) only.
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Its mount. */}}
{{- define "radixfair.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "radixfair.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}
