{{- define "support.labels" -}}
app.kubernetes.io/name: hubfleet-support
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}
{{- define "support.placeholderName" -}}{{ .Release.Name }}-user-placeholder{{- end -}}
