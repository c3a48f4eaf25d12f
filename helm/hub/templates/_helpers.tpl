{{/* Every resource name comes from here. */}}
{{- define "hub.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- define "hub.hubName" -}}{{ include "hub.fullname" . }}-hub{{- end -}}
{{- define "hub.proxyName" -}}{{ include "hub.fullname" . }}-proxy{{- end -}}
{{- define "hub.proxyApiName" -}}{{ include "hub.fullname" . }}-proxy-api{{- end -}}
{{- define "hub.secretName" -}}{{ include "hub.fullname" . }}-hub-secret{{- end -}}
{{- define "hub.pvcName" -}}{{ include "hub.fullname" . }}-hub-db{{- end -}}

{{/* Labels shared by every resource; component is added per resource. */}}
{{- define "hub.labels" -}}
app.kubernetes.io/name: jupyterhub
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
hubfleet.io/hub: {{ .Release.Name }}
{{- end -}}

{{- define "hub.selector" -}}
app.kubernetes.io/name: jupyterhub
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The optional Dask Gateway (daskGateway.enabled). */}}
{{- define "hub.daskGatewayName" -}}{{ include "hub.fullname" . }}-dask-gateway{{- end -}}
{{- define "hub.daskGatewayPrefix" -}}/services/dask-gateway{{- end -}}
