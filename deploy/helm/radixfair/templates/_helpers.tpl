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
