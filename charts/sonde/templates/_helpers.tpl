{{/* Labels every object of the release carries; "component" is operator or agent. */}}
{{- define "sonde.labels" -}}
app.kubernetes.io/name: sonde-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: sonde
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* The labels a component's pods are selected by; never change across upgrades. */}}
{{- define "sonde.selector" -}}
app.kubernetes.io/name: sonde-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* A component's image: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "sonde.image" -}}
{{- $image := index .root.Values.image .component -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end }}
