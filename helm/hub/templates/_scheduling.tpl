{{/* Node affinity for a node purpose (core | user), as zero-to-jupyterhub's matchNodePurpose. */}}
{{- define "hub.nodeAffinity" -}}
{{- $mode := .mode -}}
{{- if eq $mode "require" }}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - {key: hub.jupyter.org/node-purpose, operator: In, values: [{{ .purpose }}]}
{{- else if eq $mode "prefer" }}
nodeAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      preference:
        matchExpressions:
          - {key: hub.jupyter.org/node-purpose, operator: In, values: [{{ .purpose }}]}
{{- end }}
{{- end -}}
