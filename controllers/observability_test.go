package controllers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	inferencev1alpha1 "github.com/kinfer/kinfer/api/v1alpha1"
	"github.com/kinfer/kinfer/internal/shim"
	"github.com/kinfer/kinfer/internal/testutil"
)

// The alerts in config/prometheus and the dashboard in config/grafana are
// checked against the manager itself: every expression must parse as PromQL
// and name only metrics a running manager serves on its metrics endpoint.
var (
	rulesFile     = filepath.Join("..", "config", "prometheus", "rules.yaml")
	dashboardFile = filepath.Join("..", "config", "grafana", "kinfer-dashboard.json")
	runbookFile   = filepath.Join("..", "docs", "operations.md")
)

// madeByPrometheus are series that Prometheus itself writes for each scrape,
// which no manager serves.
var madeByPrometheus = map[string]bool{"up": true}

// promQL is one expression and where it comes from, for failure messages.
type promQL struct {
	where, expr string
}

// alertRule is the part of a PrometheusRule's rule the checks read.
type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readAlerts() []alertRule {
	GinkgoHelper()
	raw, err := os.ReadFile(rulesFile)
	Expect(err).NotTo(HaveOccurred())
	var rule struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   json.RawMessage `json:"metadata"`
		Spec       struct {
			Groups []struct {
				Name  string      `json:"name"`
				Rules []alertRule `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	Expect(yaml.UnmarshalStrict(raw, &rule)).To(Succeed())
	Expect(rule.APIVersion).To(Equal("monitoring.coreos.com/v1"))
	Expect(rule.Kind).To(Equal("PrometheusRule"))
	var alerts []alertRule
	for _, g := range rule.Spec.Groups {
		alerts = append(alerts, g.Rules...)
	}
	Expect(alerts).NotTo(BeEmpty())
	return alerts
}

// grafanaPanel is the part of a dashboard panel the checks read; rows hold
// panels of their own when collapsed.
type grafanaPanel struct {
	Title   string         `json:"title"`
	Panels  []grafanaPanel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)

// dashboardQueries reads every PromQL query of the dashboard: its panels'
// targets and the selectors of its template variables.
func dashboardQueries() []promQL {
	GinkgoHelper()
	raw, err := os.ReadFile(dashboardFile)
	Expect(err).NotTo(HaveOccurred())
	var dashboard struct {
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	Expect(json.Unmarshal(raw, &dashboard)).To(Succeed())
	var queries []promQL
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			for _, t := range p.Targets {
				queries = append(queries, promQL{where: fmt.Sprintf("panel %q target %s", p.Title, t.RefID), expr: t.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(dashboard.Panels)
	for _, v := range dashboard.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		Expect(json.Unmarshal(v.Query, &q)).To(Succeed(), "variable %s", v.Name)
		m := labelValues.FindStringSubmatch(q.Query)
		Expect(m).NotTo(BeNil(), "variable %s: want label_values(selector, label), got %q", v.Name, q.Query)
		queries = append(queries, promQL{where: "variable " + v.Name, expr: m[1]})
	}
	Expect(queries).NotTo(BeEmpty())
	return queries
}

// grafanaVariable is a $name or ${name} reference in a dashboard query.
var grafanaVariable = regexp.MustCompile(`\$\{?(\w+)\}?`)

// withoutVariables puts values in place of Grafana's variables, as Grafana
// does before it sends a query: durations for its interval variables, and a
// plain word for the dashboard's own, which only appear in label matchers.
func withoutVariables(expr string) string {
	return grafanaVariable.ReplaceAllStringFunc(expr, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return "x"
	})
}

// metricNames parses expr and returns the metric names its selectors name.
func metricNames(expr string) ([]string, error) {
	parsed, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			err = fmt.Errorf("selector %s names no metric", vs)
		}
		names = append(names, name)
		return nil
	})
	return names, err
}

// scrapedNames reads the manager's metrics endpoint and returns every series
// name it serves: a histogram's _bucket, _sum and _count, a counter's name as
// written.
func scrapedNames(g Gomega) map[string]bool {
	resp, err := http.Get(metricsURL)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	body, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	names := map[string]bool{}
	lines := bufio.NewScanner(bytes.NewReader(body))
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 4 || fields[0] != "#" || fields[1] != "TYPE" {
			continue
		}
		name := fields[2]
		switch fields[3] {
		case "histogram":
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case "summary":
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	g.Expect(lines.Err()).NotTo(HaveOccurred())
	return names
}

// runbookAnchors are the anchors of docs/operations.md's headings, as GitHub
// makes them: lower case, punctuation dropped, spaces as dashes.
func runbookAnchors() map[string]bool {
	GinkgoHelper()
	raw, err := os.ReadFile(runbookFile)
	Expect(err).NotTo(HaveOccurred())
	anchors := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		heading := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		anchors[strings.ReplaceAll(drop.ReplaceAllString(heading, ""), " ", "-")] = true
	}
	return anchors
}

var _ = Describe("Dashboards and alerts", func() {
	It("give each alert a severity, a summary, a description and a runbook in docs/operations.md", func() {
		anchors := runbookAnchors()
		const runbookBase = "https://github.com/kinfer/kinfer/blob/main/docs/operations.md#"
		for _, a := range readAlerts() {
			Expect(a.Alert).To(MatchRegexp(`^Kinfer[A-Z]\w+$`))
			Expect(a.Labels).To(HaveKeyWithValue("severity", BeElementOf("critical", "warning", "info")), a.Alert)
			Expect(a.Annotations).To(HaveKeyWithValue("summary", Not(BeEmpty())), a.Alert)
			Expect(a.Annotations).To(HaveKeyWithValue("description", Not(BeEmpty())), a.Alert)
			Expect(a.Annotations).To(HaveKeyWithValue("runbook_url", HavePrefix(runbookBase)), a.Alert)
			anchor := strings.TrimPrefix(a.Annotations["runbook_url"], runbookBase)
			Expect(anchor).To(Equal(strings.ToLower(a.Alert)), "%s: the runbook section is named after the alert", a.Alert)
			Expect(anchors).To(HaveKey(anchor), "%s: docs/operations.md has no heading for #%s", a.Alert, anchor)
		}
	})

	It("use only metrics that a running manager serves, in expressions that parse", func() {
		alerts := readAlerts()
		queries := make([]promQL, 0, len(alerts))
		for _, a := range alerts {
			queries = append(queries, promQL{where: "alert " + a.Alert, expr: a.Expr})
		}
		queries = append(queries, dashboardQueries()...)
		used := map[string][]string{} // metric name -> where it is used
		for _, q := range queries {
			names, err := metricNames(withoutVariables(q.expr))
			Expect(err).NotTo(HaveOccurred(), "%s: %s", q.where, q.expr)
			Expect(names).NotTo(BeEmpty(), "%s names no metric", q.where)
			for _, n := range names {
				used[n] = append(used[n], q.where)
			}
		}

		By("driving a request through the shim, its Job and its callback, while another waits to start")
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceModel("default", ns, workerImage).Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		DeferCleanup(receiver.Close)
		shimURL := startShim(ns)

		body := fmt.Sprintf(`{"id": "observed", "callback_url": %q}`, receiver.URL+"/results")
		resp, err := http.Post(shimURL+"/v1/inferences", "application/json", strings.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		Expect(resp.Body.Close()).To(Succeed())
		Expect(resp.StatusCode).To(Equal(http.StatusAccepted))
		resp, err = http.Get(shimURL + "/v1/inferences/unknown")
		Expect(err).NotTo(HaveOccurred())
		Expect(resp.Body.Close()).To(Succeed())
		Expect(resp.StatusCode).To(Equal(http.StatusNotFound))

		var list inferencev1alpha1.InferenceRequestList
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			g.Expect(list.Items).To(HaveLen(1))
		}).Should(Succeed())
		ir := &list.Items[0]
		job := &batchv1.Job{}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), job) }).Should(Succeed())
		Expect(testutil.CompleteJob(ctx, k8sClient, job, `"OK"`)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ir), ir)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(ir.Status.Conditions, inferencev1alpha1.ConditionDelivered)).To(BeTrue())
		}).Should(Succeed())
		// A request of a model that does not exist waits to start, so the
		// queue's gauges have a series.
		Expect(k8sClient.Create(ctx, testutil.MakeInferenceRequest("waiting", ns).Model("absent").Obj())).To(Succeed())

		By("scraping the manager's metrics endpoint")
		Eventually(func(g Gomega) {
			served := scrapedNames(g)
			for name, where := range used {
				if madeByPrometheus[name] {
					continue
				}
				g.Expect(served).To(HaveKey(name), "%s is used by %s", name, strings.Join(where, ", "))
			}
		}).Should(Succeed())
	})
})

// startShim serves the HTTP shim for namespace on a free loopback port until
// the spec ends, its metrics on the manager's endpoint as main registers
// them, and returns its URL.
func startShim(namespace string) string {
	GinkgoHelper()
	reg := &managerMetrics{}
	shimMetrics := shim.NewMetrics()
	Expect(shimMetrics.Register(reg)).To(Succeed())
	addr := freeLocalAddr()
	server := &shim.Server{
		Addr:    addr,
		Handler: shim.NewHandler(shim.Options{Client: k8sClient, Namespace: namespace, RetryAfter: time.Second}),
		Log:     ctrl.Log.WithName("shim"),
		Metrics: shimMetrics,
	}
	shimCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(server.Start(shimCtx)).To(Succeed())
	}()
	DeferCleanup(func() {
		stop()
		<-done
		reg.unregisterAll()
	})
	url := "http://" + addr
	Eventually(func() error {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			err = resp.Body.Close()
		}
		return err
	}).Should(Succeed())
	return url
}
