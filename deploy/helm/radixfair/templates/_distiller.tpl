{{/* Pod template of a distiller job. Call with (dict "ctx" $ "name" recipe "args" list "variant" v "gpus" n). */}}
{{- define "radixfair.distillerPod" -}}
{{- $ctx := .ctx -}}
{{- $fullname := include "radixfair.fullname" $ctx -}}
metadata:
  labels:
    {{- include "radixfair.selectorLabels" (dict "ctx" $ctx "component" "distiller") | nindent 4 }}
    radixfair.dev/recipe: {{ .name }}
spec:
  {{- include "radixfair.podCommon" $ctx | nindent 2 }}
  restartPolicy: Never
  initContainers:
    {{- include "radixfair.prepareModel" (dict "ctx" $ctx "variant" .variant) | nindent 4 }}
  containers:
    - name: distiller
      image: {{ include "radixfair.image" (dict "ctx" $ctx "repository" $ctx.Values.distiller.image.repository "variant" .variant) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      command:
        {{- if gt .gpus 1 }}
        {{- $launcher := list }}
        {{- range $part := $ctx.Values.distiller.distributedCommand }}
        {{- $launcher = append $launcher (replace "{gpus}" (toString $.gpus) $part) }}
        {{- end }}
        {{- toYaml $launcher | nindent 8 }}
        {{- else }}
        {{- toYaml $ctx.Values.distiller.jobCommand | nindent 8 }}
        {{- end }}
      args:
        {{- toYaml .args | nindent 8 }}
      # The distiller reads no tracing settings: only a writable HOME.
      env:
        - name: HOME
          value: /tmp
      securityContext:
        {{- toYaml $ctx.Values.securityContext | nindent 8 }}
      resources:
        requests:
          {{- toYaml $ctx.Values.distiller.resources.requests | nindent 10 }}
          {{- if gt .gpus 0 }}
          {{ $ctx.Values.distiller.gpu.resourceName }}: {{ .gpus }}
          {{- end }}
        limits:
          {{- toYaml $ctx.Values.distiller.resources.limits | nindent 10 }}
          {{- if gt .gpus 0 }}
          {{ $ctx.Values.distiller.gpu.resourceName }}: {{ .gpus }}
          {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/radixfair/distiller.yaml
          subPath: distiller.yaml
          readOnly: true
        - name: config
          mountPath: /etc/radixfair/recipes/{{ .name }}.yaml
          subPath: recipe-{{ .name }}.yaml
          readOnly: true
        - name: models
          mountPath: /models
          readOnly: true
        - name: work
          mountPath: /distiller
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ $fullname }}-config
    {{- include "radixfair.modelVolume" $ctx | nindent 4 }}
    - name: work
      {{- if $ctx.Values.distiller.work.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ $ctx.Values.distiller.work.existingClaim }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    - name: tmp
      emptyDir: {}
  {{- with $ctx.Values.distiller.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ctx.Values.distiller.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ctx.Values.distiller.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
