// Load a SEG over its source images the way OHIF 3.13.2 does, and write the labelmap it builds.
//
//   node seg_labelmap.mjs OUT.json SEG.dcm SOURCE.dcm [SOURCE.dcm ...]
//
// OHIF's SEG extension calls @cornerstonejs/adapters (5.6.8, the version it pins)
// adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(referencedImageIds, arrayBuffer,
// { metadataProvider }) with the display set's image ids and cornerstone's metadata registry. Here the
// image ids are "medagent:<SOPInstanceUID>" and the registry is fed from the source files parsed with
// dcmjs. The adapter matches every SEG frame to a source image (by its Source Image Sequence, else by
// position) and fills one labelmap image per source image with segment numbers.
//
// OUT.json: {"labelmaps": [{"<SOPInstanceUID>": [[value, run length], ...]}, ...],  one object per labelmap
//            layer (overlapping segments need more than one), "segments": [numbers],
//            "segmentsOnFrame": {...}}

import fs from "node:fs";

import { adaptersSEG } from "@cornerstonejs/adapters";
import { metaData } from "@cornerstonejs/core";
import dcmjs from "dcmjs";

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicom = DicomMessage.readFile(buffer);
  return { dataset: DicomMetaDictionary.naturalizeDataset(dicom.dict), buffer };
}

const numbers = (value) => (Array.isArray(value) ? value : [value]).map(Number);

function imagePlane(dataset) {
  const orientation = dataset.ImageOrientationPatient ? numbers(dataset.ImageOrientationPatient) : undefined;
  const spacing = dataset.PixelSpacing ? numbers(dataset.PixelSpacing) : [1, 1];
  return {
    frameOfReferenceUID: dataset.FrameOfReferenceUID,
    rows: dataset.Rows,
    columns: dataset.Columns,
    imageOrientationPatient: orientation,
    rowCosines: orientation ? orientation.slice(0, 3) : undefined,
    columnCosines: orientation ? orientation.slice(3, 6) : undefined,
    imagePositionPatient: dataset.ImagePositionPatient ? numbers(dataset.ImagePositionPatient) : undefined,
    sliceThickness: dataset.SliceThickness ? Number(dataset.SliceThickness) : undefined,
    pixelSpacing: spacing,
    rowPixelSpacing: spacing[0],
    columnPixelSpacing: spacing[1],
  };
}

function runLengths(pixels) {
  const runs = [];
  let value = pixels[0];
  let length = 0;
  for (let index = 0; index < pixels.length; index++) {
    if (pixels[index] === value) {
      length++;
    } else {
      runs.push([value, length]);
      value = pixels[index];
      length = 1;
    }
  }
  runs.push([value, length]);
  return runs;
}

async function main() {
  const [outPath, segPath, ...sourcePaths] = process.argv.slice(2);
  const instances = new Map();
  for (const path of sourcePaths) {
    const { dataset } = readDataset(path);
    delete dataset.PixelData;
    instances.set(`medagent:${dataset.SOPInstanceUID}`, dataset);
  }
  metaData.addProvider((type, imageId) => {
    const dataset = instances.get(imageId);
    if (!dataset) {
      return undefined;
    }
    switch (type) {
      case "instance":
        return dataset;
      case "imagePlaneModule":
        return imagePlane(dataset);
      case "generalSeriesModule":
        return {
          modality: dataset.Modality,
          seriesInstanceUID: dataset.SeriesInstanceUID,
          studyInstanceUID: dataset.StudyInstanceUID,
        };
      case "generalImageModule":
        return { sopInstanceUID: dataset.SOPInstanceUID, instanceNumber: dataset.InstanceNumber };
      case "imagePixelModule":
        return {
          samplesPerPixel: dataset.SamplesPerPixel,
          photometricInterpretation: dataset.PhotometricInterpretation,
          rows: dataset.Rows,
          columns: dataset.Columns,
          bitsAllocated: dataset.BitsAllocated,
          bitsStored: dataset.BitsStored,
          highBit: dataset.HighBit,
          pixelRepresentation: dataset.PixelRepresentation,
        };
      default:
        return undefined;
    }
  }, 10000);

  const { buffer } = readDataset(segPath);
  const imageIds = [...instances.keys()];
  const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(imageIds, buffer, {
    metadataProvider: metaData,
  });
  const labelmaps = result.labelMapImages.map((layer) => {
    const bySource = {};
    for (const image of layer) {
      const source = instances.get(image.referencedImageId);
      bySource[source.SOPInstanceUID] = runLengths(image.getPixelData());
    }
    return bySource;
  });
  const segments = (result.segMetadata?.data ?? [])
    .map((segment, index) => (segment ? index : null))
    .filter((index) => index !== null && index > 0);
  fs.writeFileSync(
    outPath,
    JSON.stringify({
      labelmaps,
      segments,
      hasOverlappingSegments: Boolean(result.overlappingSegments),
    }),
  );
}

main().catch((error) => {
  console.error(error?.stack ?? String(error));
  process.exit(1);
});
