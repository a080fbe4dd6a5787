package controllers

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

var samplesDir = filepath.Join("..", "config", "samples")

// The samples are what users copy first, so they must be accepted as written:
// strict field validation refuses unknown or misspelt fields, as kubectl apply does.
var _ = Describe("Samples", func() {
	It("lists every sample file in its kustomization", func() {
		files, err := filepath.Glob(filepath.Join(samplesDir, "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		var names []string
		for _, f := range files {
			if filepath.Base(f) != "kustomization.yaml" {
				names = append(names, filepath.Base(f))
			}
		}
		Expect(sampleResources()).To(ConsistOf(names))
	})

	It("are accepted by the API server in the kustomization's order", func() {
		ns := newNamespace()
		for _, file := range sampleResources() {
			for _, obj := range readObjects(filepath.Join(samplesDir, file)) {
				obj.SetNamespace(ns)
				Expect(k8sClient.Create(ctx, obj, client.FieldValidation("Strict"))).
					To(Succeed(), "%s: %s %s", file, obj.GetKind(), obj.GetName())

				stored := obj.DeepCopy()
				Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), stored)).To(Succeed())
				spec, _ := obj.Object["spec"].(map[string]any) // a Secret has none
				for field := range spec {
					Expect(stored.Object["spec"]).To(HaveKey(field), "%s: the API server dropped spec.%s", file, field)
				}
			}
		}
	})
})

func sampleResources() []string {
	GinkgoHelper()
	raw, err := os.ReadFile(filepath.Join(samplesDir, "kustomization.yaml"))
	Expect(err).NotTo(HaveOccurred())
	var k struct {
		Resources []string `json:"resources"`
	}
	Expect(yaml.Unmarshal(raw, &k)).To(Succeed())
	Expect(k.Resources).NotTo(BeEmpty())
	return k.Resources
}

func readObjects(path string) []*unstructured.Unstructured {
	GinkgoHelper()
	raw, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		err := decoder.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		Expect(err).NotTo(HaveOccurred(), path)
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
	Expect(objs).NotTo(BeEmpty(), "%s holds no objects", path)
	return objs
}
