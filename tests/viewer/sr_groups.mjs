// Parse a TID 1500 SR with dcmjs and list what a viewer finds in it, the way OHIF 3.13.2's SR extension does.
//
//   node sr_groups.mjs SR.dcm [SR.dcm ...]      prints one JSON object per file, as a JSON array
//
// dcmjs.data.DicomMessage.readFile + DicomMetaDictionary.naturalizeDataset, then the Imaging Measurements
// container's Measurement Groups: Tracking Identifier, Tracking UID, 2D SCOORDs (graphic type, points,
// referenced instance and frames), numeric values with units, image references (SEG segments), finding.
// Groups sharing a Tracking UID are merged (as OHIF merges them) and each merged measurement says whether it
// has a 2D SCOORD OHIF can draw. The Qualitative Evaluations container's items are listed too. Finally
// dcmjs's own MeasurementReport.generateToolState is run on the dataset, and whether it threw is reported.

import fs from "node:fs";

import dcmjs from "dcmjs";

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
const DRAWABLE = new Set(["POLYLINE", "ELLIPSE", "CIRCLE", "POINT", "MULTIPOINT"]);

const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const concept = (item) => asArray(item.ConceptNameCodeSequence)[0] ?? {};
const code = (value) => ({ value: value.CodeValue, scheme: value.CodingSchemeDesignator, meaning: value.CodeMeaning });

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const dicom = DicomMessage.readFile(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const dataset = DicomMetaDictionary.naturalizeDataset(dicom.dict);
  dataset._meta = DicomMetaDictionary.namifyDataset(dicom.meta);
  return dataset;
}

function reference(item) {
  const sop = asArray(item.ReferencedSOPSequence)[0] ?? {};
  return {
    sopInstanceUID: sop.ReferencedSOPInstanceUID,
    sopClassUID: sop.ReferencedSOPClassUID,
    frames: asArray(sop.ReferencedFrameNumber).map(Number),
    segments: asArray(sop.ReferencedSegmentNumber).map(Number),
  };
}

function group(item) {
  const found = { trackingIdentifier: null, trackingUID: null, scoords: [], numbers: {}, images: [], finding: null, evaluations: [] };
  for (const child of asArray(item.ContentSequence)) {
    const name = concept(child);
    if (child.ValueType === "TEXT" && name.CodeValue === "112039") {
      found.trackingIdentifier = child.TextValue;
    } else if (child.ValueType === "UIDREF" && name.CodeValue === "112040") {
      found.trackingUID = child.UID;
    } else if (child.ValueType === "SCOORD") {
      const source = asArray(child.ContentSequence).find((c) => c.ValueType === "IMAGE");
      found.scoords.push({
        graphicType: child.GraphicType,
        points: asArray(child.GraphicData).map(Number),
        ...(source ? reference(source) : {}),
      });
    } else if (child.ValueType === "NUM") {
      const measured = asArray(child.MeasuredValueSequence)[0] ?? {};
      const unit = asArray(measured.MeasurementUnitsCodeSequence)[0] ?? {};
      found.numbers[name.CodeMeaning] = { value: Number(measured.NumericValue), unit: unit.CodeValue };
    } else if (child.ValueType === "IMAGE") {
      found.images.push({ concept: name.CodeMeaning, ...reference(child) });
    } else if (child.ValueType === "CODE" && name.CodeValue === "121071") {
      found.finding = code(asArray(child.ConceptCodeSequence)[0]);
    } else if (child.ValueType === "CODE") {
      found.evaluations.push({ concept: name.CodeMeaning, value: code(asArray(child.ConceptCodeSequence)[0]) });
    }
  }
  return found;
}

function evaluationItem(item) {
  const entry = { concept: code(concept(item)), valueType: item.ValueType };
  if (item.ValueType === "TEXT") {
    entry.text = item.TextValue;
  } else if (item.ValueType === "CODE") {
    entry.value = code(asArray(item.ConceptCodeSequence)[0]);
  }
  entry.properties = asArray(item.ContentSequence)
    .filter((child) => child.ValueType === "NUM")
    .map((child) => ({
      concept: concept(child).CodeMeaning,
      relationship: child.RelationshipType,
      value: Number(asArray(child.MeasuredValueSequence)[0]?.NumericValue),
    }));
  return entry;
}

function summarise(path) {
  const dataset = readDataset(path);
  const root = asArray(dataset.ContentSequence);
  const groups = [];
  const evaluations = [];
  for (const item of root) {
    const name = concept(item);
    if (item.ValueType === "CONTAINER" && name.CodeValue === "126010") {
      for (const child of asArray(item.ContentSequence)) {
        if (concept(child).CodeValue === "125007") {
          groups.push(group(child));
        }
      }
    } else if (item.ValueType === "CONTAINER" && name.CodeValue === "C0034375") {
      evaluations.push(...asArray(item.ContentSequence).map(evaluationItem));
    }
  }
  const merged = {};
  for (const found of groups) {
    const entry = (merged[found.trackingUID] ??= { trackingIdentifiers: [], drawable: false, numbers: {} });
    entry.trackingIdentifiers.push(found.trackingIdentifier);
    entry.drawable ||= found.scoords.some((scoord) => DRAWABLE.has(scoord.graphicType) && scoord.sopInstanceUID);
    Object.assign(entry.numbers, found.numbers);
  }
  let toolStateError = null;
  try {
    dcmjs.adapters.Cornerstone.MeasurementReport.generateToolState(dataset);
  } catch (error) {
    toolStateError = String(error?.message ?? error);
  }
  return {
    sopInstanceUID: dataset.SOPInstanceUID,
    template: asArray(dataset.ContentTemplateSequence)[0]?.TemplateIdentifier,
    completion: dataset.CompletionFlag,
    verification: dataset.VerificationFlag,
    groups,
    merged,
    evaluations,
    toolStateError,
  };
}

const summaries = process.argv.slice(2).map(summarise);
process.stdout.write(JSON.stringify(summaries));
