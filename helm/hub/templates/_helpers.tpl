{{/* Names of what this wrapper adds; z2jh names its own objects (hub, proxy-public, ...). */}}
{{- define "hub.daskGatewayName" -}}dask-gateway{{- end -}}
{{- define "hub.daskGatewayPrefix" -}}/services/dask-gateway{{- end -}}

{{/* Labels of the wrapper's objects, in z2jh's style so `kubectl -l release=` finds all. */}}
{{- define "hub.labels" -}}
app: jupyterhub
release: {{ .Release.Name }}
heritage: {{ .Release.Service }}
chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
hubfleet.io/hub: {{ .Release.Name }}
{{- end -}}

{{- define "hub.selector" -}}
app: jupyterhub
release: {{ .Release.Name }}
{{- end -}}
